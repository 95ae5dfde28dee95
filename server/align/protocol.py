"""Schema of the native ``POST /v1/align`` endpoint: a prompt or chat messages, a decoder and rewards."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..generation.protocol import AlignmentChoice, AlignmentUsage, CandidateOut, SamplingFields
from ..openai.protocol import ChatMessageIn


class AlignRequest(SamplingFields):
    """One prompt (``prompt``), one conversation (``messages``) or several of either (``prompts``), answered by
    ``decoder`` under ``reward``.

    Unlike the OpenAI endpoints, unknown fields are errors here: a misspelt option must not be ignored.
    """

    model_config = ConfigDict(
        allow_inf_nan=False,
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}, {"required": ["prompts"]}],
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
    prompts: list[str | list[ChatMessageIn]] | None = Field(None, min_length=1, max_length=256)
    """Several prompts (texts or conversations) in one request, under one ``budget``: a decoder that shares it
    (``best_of_n`` with ``allocate``) spends it where more samples are expected to gain most. Prompt ``p``'s
    answers are ``choices`` ``p * n`` to ``p * n + n - 1``; ``candidates`` and ``info`` are then lists, one
    entry per prompt (``info`` says what each prompt got)."""
    return_candidates: bool = True
    """Return every candidate the decoder scored."""
    logprobs: int | None = Field(None, ge=0)
    """Top log-probs per generated token to keep on the chosen answers (for decoders that use them)."""
    stream: bool = False
    """Stream the answer as it is decided (``alignment.chunk`` events; search and blockwise decoders commit
    tokens as they go), then the whole response as the last event before ``[DONE]``."""

    @model_validator(mode="after")
    def _one_prompt(self) -> AlignRequest:
        if sum(x is not None for x in (self.prompt, self.messages, self.prompts)) != 1:
            raise ValueError("give exactly one of prompt, messages or prompts")
        return self

    @field_validator("prompts")
    @classmethod
    def _no_empty_prompt(cls, prompts: list[Any] | None) -> list[Any] | None:
        if prompts is not None and any(not p for p in prompts):
            raise ValueError("prompts must not hold an empty prompt or conversation")
        return prompts

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
    candidates: list[CandidateOut] | list[list[CandidateOut]] | None = None
    """Every candidate scored (with ``prompts``: a list per prompt)."""
    usage: AlignUsage
    timings: dict[str, float]
    info: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)
    """What the decoder reports (with ``prompts``: one object per prompt)."""
