"""Schema of the native ``POST /v1/align`` endpoint: a prompt or chat messages, a decoder and rewards."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..generation.protocol import AlignmentChoice, AlignmentUsage, CandidateOut, SamplingFields
from ..openai.protocol import ChatMessageIn


class AlignRequest(SamplingFields):
    """One prompt (``prompt``) or one conversation (``messages``), answered by ``decoder`` under ``reward``.

    Unlike the OpenAI endpoints, unknown fields are errors here: a misspelt option must not be ignored.
    """

    model_config = ConfigDict(
        allow_inf_nan=False,
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
            "examples": [
                {"prompt": "The sea is", "max_tokens": 8, "decoder": {"name": "best_of_n", "num_candidates": 2}},
                {
                    "messages": [{"role": "user", "content": "Verdict?"}],
                    "max_tokens": 16,
                    "response_format": {"type": "json_object"},
                },
            ],
        },
    )

    prompt: str | None = Field(None, min_length=1)
    """Raw prompt text, sent to the model as is."""
    messages: list[ChatMessageIn] | None = Field(None, min_length=1)
    """A conversation, rendered with the model's chat template."""
    return_candidates: bool = True
    """Return every candidate the decoder scored."""
    logprobs: int | None = Field(None, ge=0)
    """Top log-probs per generated token to keep on the chosen answers (for decoders that use them)."""
    stream: bool = False
    """Stream the answer as it is decided (``alignment.chunk`` events; search and blockwise decoders commit
    tokens as they go), then the whole response as the last event before ``[DONE]``."""

    @model_validator(mode="after")
    def _one_prompt(self) -> AlignRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self

    def requested_logprobs(self) -> int | None:
        return self.logprobs


class AlignChunk(BaseModel):
    """A streamed piece of the answer of ``/v1/align``."""

    id: str
    object: Literal["alignment.chunk"] = "alignment.chunk"
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


class AlignChoice(AlignmentChoice):
    """A returned answer with its rewards."""

    text: str
    finish_reason: str | None = None


class AlignUsage(AlignmentUsage):
    """OpenAI's usage fields and everything the request cost in engine and reward work."""

    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class AlignResponse(BaseModel):
    """``POST /v1/align``: the chosen answers, every candidate, the work spent and the time of each phase."""

    id: str
    object: Literal["alignment"] = "alignment"
    created: int
    model: str
    decoder: str
    decoder_params: dict[str, Any]
    reward: list[str]
    choices: list[AlignChoice]
    candidates: list[CandidateOut] | None = None
    usage: AlignUsage
    timings: dict[str, float]
    info: dict[str, Any] = Field(default_factory=dict)
