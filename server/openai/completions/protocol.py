"""Schemas of ``POST /v1/completions``: OpenAI's completion request and ``text_completion`` response."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...errors import BadRequest
from ...generation.protocol import Alignment, SamplingFields
from ..protocol import StreamOptions, UsageOut


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    model_config = ConfigDict(  # merged into StrictModel's
        json_schema_extra={
            "examples": [
                {"prompt": "The sea is", "max_tokens": 8},
                {"prompt": ["Pick:", "Again:"], "max_tokens": 4, "structured_outputs": {"choice": ["red", "blue"]}},
                {"prompt": "The capital of France is", "max_tokens": 0, "echo": True, "logprobs": 1},
            ]
        }
    )

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

    def refuse_unsupported(self) -> None:
        if self.suffix is not None:
            raise BadRequest("suffix is not supported", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise BadRequest(
                "best_of is not supported; use decoder={'name': 'best_of_n', 'num_candidates': N} with a reward",
                param="best_of",
            )

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


# ---- responses ----------------------------------------------------------------------------------------------


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
