"""Schemas of the OpenAI-compatible endpoints ``/v1/completions`` and ``/v1/chat/completions``.

Standard OpenAI fields plus ``decoder``, ``reward`` and ``return_candidates`` (sent by the ``openai`` client
through ``extra_body``). Responses are valid OpenAI objects with one extra ``alignment`` object.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from .protocol import SamplingFields, StrictModel
from .responses import Alignment


class StreamOptions(StrictModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(...)
    max_tokens: int | None = Field(None, ge=0)
    """New tokens per answer; 0 (with ``echo``) only scores the prompt, as evaluation harnesses do."""
    logprobs: int | None = Field(None, ge=0)
    """Top log-probs per token, besides the token's own; with ``echo``, for the prompt's tokens too."""
    echo: bool = False
    """Return the prompt before each answer (and, with ``logprobs``, the prompt tokens' log-probs)."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _prompt_shape(self) -> CompletionRequest:
        p = self.prompt
        if isinstance(p, list) and not p:
            raise ValueError("prompt must not be empty")
        if isinstance(p, list) and isinstance(p[0], list) and any(not x for x in p):
            raise ValueError("prompt token lists must not be empty")
        if isinstance(p, str) and not p:
            raise ValueError("prompt must not be empty")
        return self

    def requested_logprobs(self) -> int | None:
        return self.logprobs

    def requested_prompt_logprobs(self) -> int | None:
        return self.logprobs if self.echo else None

    def echoes(self) -> bool:
        return self.echo

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: one string, several strings, one token list or several."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TextPart(StrictModel):
    """A content part; alignd's models read text, so ``text`` is the only type accepted."""

    type: Literal["text"]
    text: str


class ChatMessageIn(StrictModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_template_message(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


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

    def requested_logprobs(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0


# ---- responses ---------------------------------------------------------------------------------------------


class UsageOut(BaseModel):
    """OpenAI's ``usage``: the prompts and the returned answers (what everything cost is in ``alignment``)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    """``text_completion``, plus ``alignment``."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut
    alignment: Alignment


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
