"""Schemas of ``POST /v1/chat/completions``: OpenAI's chat request and ``chat.completion`` response."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from ...errors import BadRequest, Unsupported
from ...generation.protocol import Alignment, SamplingFields
from ..protocol import ChatMessageIn, StreamOptions, UsageOut


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessageIn] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    add_generation_prompt: bool = True
    chat_template: str | None = None

    logprobs_param: ClassVar[str] = "top_logprobs"

    @model_validator(mode="after")
    def _resolve(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self

    def refuse_unsupported(self) -> None:
        if self.tools:
            raise Unsupported("tools are not supported by alignd", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise Unsupported("only response_format type 'text' is supported", param="response_format")
        if self.chat_template is not None:
            raise BadRequest(
                "a request may not supply a chat template; the model's own template is used", param="chat_template"
            )

    def requested_logprobs(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0


# ---- responses ----------------------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatLogprob] | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    """``chat.completion``, plus ``alignment``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut
    alignment: Alignment
