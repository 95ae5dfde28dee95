"""Schemas of ``POST /v1/chat/completions``: OpenAI's chat request and ``chat.completion`` response."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ....structured import AnswerFormat
from ...errors import BadRequest
from ...generation.formats import NamedToolChoice, ToolChoiceIn, ToolDef, answer_format
from ...generation.protocol import Alignment, SamplingFields
from ..protocol import ChatMessageIn, StreamOptions, UsageOut, check_tool_results, refuse_media


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(  # merged into StrictModel's
        json_schema_extra={
            "examples": [
                {"messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 8},
                {
                    "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                    "tools": [
                        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
                    ],
                    "tool_choice": "required",
                    "max_tokens": 16,
                },
            ]
        },
    )

    messages: list[ChatMessageIn] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolDef] | None = Field(None, max_length=128)
    """Functions the model may call (``tool_choice``)."""
    tool_choice: ToolChoiceIn | None = None
    """``none``, ``auto`` (the default with tools), ``required``, or ``{"type": "function", "function": {"name"}}``."""
    parallel_tool_calls: bool = True
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

    def answer_format(self) -> tuple[AnswerFormat | None, str]:
        choice = self.tool_choice
        name = choice.function.name if isinstance(choice, NamedToolChoice) else choice
        functions = [t.function for t in self.tools or []]
        return answer_format(self.response_format, self.structured_outputs, functions, name, self.parallel_tool_calls)

    def template_tools(self) -> tuple[dict[str, Any], ...]:
        """The tools as the prompt shows them: none when ``tool_choice`` is ``none``."""
        if not self.tools or self.tool_choice == "none":
            return ()
        return tuple(t.model_dump(exclude_none=True) for t in self.tools)

    def refuse_unsupported(self) -> None:
        for i, message in enumerate(self.messages):
            if isinstance(message.content, list):
                refuse_media(message.content, f"messages.{i}.content")
        check_tool_results(self.messages)
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


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] = Field(default_factory=list)


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
