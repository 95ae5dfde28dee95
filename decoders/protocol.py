"""The decoder protocol: a decoder turns one request into answers by driving an engine and scoring with rewards.

A decoder is a small class with a pydantic ``Params`` model (``extra="forbid"``, every number bounded) and an
``async decode(request, context)``. It sees only the engine protocol and a :class:`~alignd.rewards.RewardSet`,
never HTTP, so it runs from a plain script as well as from the server::

    ctx = DecodeContext(engine, rewards)
    result = await BestOfN(BestOfN.Params(num_candidates=8)).decode(request, ctx)

Every decoder returns the chosen answers, every candidate it scored, the engine and reward work it spent (the
context meters it; decoders do not count by hand) and its wall time per phase.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..engines.protocol import Engine, Generation, SamplingConfig, StreamDelta
from ..rewards.protocol import Prompt, RewardError
from ..rewards.scoring import RewardSet, Scores


class DecoderError(ValueError):
    """A request a decoder cannot serve as asked (e.g. it needs a reward and none was given); HTTP 400."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class DecoderParams(BaseModel):
    """Base of every decoder's parameters: unknown fields are errors and docstrings become the JSON schema."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


def cap(limit: str) -> dict[str, Any]:
    """``json_schema_extra`` marking a field as bounded by the server limit ``limit`` (checked before any work).

    >>> from pydantic import Field
    >>> Field(4, ge=1, le=1024, json_schema_extra=cap("max_candidates")).json_schema_extra
    {'x-alignd-cap': 'max_candidates'}
    """
    return {"x-alignd-cap": limit}


@dataclass(slots=True)
class DecodeRequest:
    """One request as a decoder sees it: prompt tokens, what rewards see of the prompt, and sampling settings."""

    request_id: str
    prompt_token_ids: list[int]
    prompt: Prompt
    sampling: SamplingConfig
    """The user's sampling settings (``n`` there is ignored: see :attr:`n`)."""
    n: int = 1
    """How many answers to return."""


@dataclass(slots=True)
class Candidate:
    """A scored candidate answer."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    reward: float | None = None
    """The request's combined reward (weighted sum), ``None`` if unscored or dropped."""
    rewards: dict[str, float | None] = field(default_factory=dict)
    """Raw score of each reward model."""
    calibrated: float | None = None
    score: float | None = None
    """The decoder's own ranking score where it has one (beam log-prob, search value)."""
    dropped: str | None = None
    """Why this candidate was excluded from selection (its reward failed), if it was."""
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def public(self) -> dict[str, Any]:
        """The JSON the API returns for a candidate (no log-prob tables)."""
        return {
            "index": self.index,
            "text": self.text,
            "num_tokens": self.num_tokens,
            "finish_reason": self.finish_reason,
            "reward": self.reward,
            "rewards": self.rewards,
            "calibrated_reward": self.calibrated,
            "score": self.score,
            "dropped": self.dropped,
        }


@dataclass(slots=True)
class Usage:
    """Work a decode spent. ``engine_*`` counts every token the engine processed, candidates not chosen included."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_calls: int = 0
    engine_requests: int = 0
    engine_prompt_tokens: int = 0
    engine_completion_tokens: int = 0
    engine_cached_tokens: int = 0
    reward_calls: int = 0
    candidates_scored: int = 0
    engine_seconds: float = 0.0
    reward_seconds: float = 0.0
    reward_seconds_by_name: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class DecodeResult:
    """What a decoder returns."""

    choices: list[Candidate]
    candidates: list[Candidate]
    usage: Usage
    timings: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    """Decoder-specific facts (e.g. whether a threshold was reached)."""


class MeteredEngine:
    """Wraps an :class:`Engine` and adds every call's tokens and time to a :class:`Usage`."""

    def __init__(self, engine: Engine, usage: Usage):
        self._engine = engine
        self._usage = usage
        self.info = engine.info
        self.tokenizer = engine.tokenizer

    def _account(self, gens: Sequence[Generation], elapsed: float) -> None:
        u = self._usage
        u.engine_calls += 1
        u.engine_requests += len(gens)
        u.engine_seconds += elapsed
        for g in gens:
            u.engine_prompt_tokens += len(g.prompt_token_ids)
            u.engine_cached_tokens += g.num_cached_tokens
            u.engine_completion_tokens += g.completion_tokens

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingConfig, request_id: str
    ) -> list[Generation]:
        start = time.perf_counter()
        gens = await self._engine.generate(prompts, params, request_id)
        self._account(gens, time.perf_counter() - start)
        return gens

    async def stream(
        self, prompt: Sequence[int], params: SamplingConfig, request_id: str
    ) -> AsyncIterator[StreamDelta]:
        u = self._usage
        u.engine_calls += 1
        u.engine_requests += 1
        u.engine_prompt_tokens += len(prompt)
        start = time.perf_counter()
        try:
            async for delta in self._engine.stream(prompt, params, request_id):
                u.engine_completion_tokens += len(delta.token_ids)
                yield delta
        finally:
            u.engine_seconds += time.perf_counter() - start

    async def continuation_logprobs(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], request_id: str
    ) -> list[list[float]]:
        start = time.perf_counter()
        out = await self._engine.continuation_logprobs(prompts, continuations, request_id)
        u = self._usage
        u.engine_calls += 1
        u.engine_requests += len(prompts)
        u.engine_prompt_tokens += sum(len(p) + len(c) for p, c in zip(prompts, continuations))
        u.engine_seconds += time.perf_counter() - start
        return out

    async def abort(self, request_ids: Sequence[str]) -> None:
        await self._engine.abort(request_ids)


class DecodeContext:
    """What a decoder works with: the (metered) engine, the request's rewards, and the phase clock."""

    def __init__(self, engine: Engine, rewards: RewardSet | None = None, engines: dict[str, Engine] | None = None):
        self.usage = Usage()
        self.engine = MeteredEngine(engine, self.usage)
        self.rewards = rewards
        self._engines = engines or {}
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def engine_for(self, model: str | None, param: str) -> MeteredEngine:
        """Another served model (a baseline for rollouts), metered into the same usage; ``None``: this one."""
        if model is None or model == self.engine.info.name:
            return self.engine
        engine = self._engines.get(model)
        if engine is None:
            raise DecoderError(f"model {model!r} is not served here; available: {sorted(self._engines)}", param)
        return MeteredEngine(engine, self.usage)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``timings[name]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def require_rewards(self, decoder: str) -> RewardSet:
        if self.rewards is None:
            raise DecoderError(f"decoder {decoder!r} needs a reward: set 'reward' to a declared reward", "reward")
        return self.rewards

    async def score_texts(self, prompt: Prompt, texts: Sequence[str]) -> Scores:
        """Score texts with the request's rewards (one batched call per reward), metered as reward work."""
        rewards = self.require_rewards("this decoder")
        with self.phase("reward"):
            scores = await rewards.score(prompt, texts)
        u = self.usage
        u.reward_calls += 1
        u.candidates_scored += len(texts)
        for name, seconds in scores.seconds.items():
            u.reward_seconds_by_name[name] = u.reward_seconds_by_name.get(name, 0.0) + seconds
        u.reward_seconds = self.timings.get("reward", 0.0)
        return scores

    async def score(self, prompt: Prompt, candidates: Sequence[Candidate]) -> Scores | None:
        """Score ``candidates`` in one batched call per reward and write the scores onto them."""
        if self.rewards is None or not candidates:
            return None
        scores = await self.score_texts(prompt, [c.text for c in candidates])
        for i, c in enumerate(candidates):
            c.reward = scores.total[i]
            c.rewards = {name: values[i] for name, values in scores.per_reward.items()}
            c.dropped = scores.dropped.get(i)
        return scores

    def result(
        self, request: DecodeRequest, choices: list[Candidate], candidates: list[Candidate], **info: Any
    ) -> DecodeResult:
        """Close the clock and package a :class:`DecodeResult`."""
        total = time.perf_counter() - self._start
        self.usage.prompt_tokens = len(request.prompt_token_ids)
        self.usage.completion_tokens = sum(c.num_tokens for c in choices)
        timings = dict(self.timings)
        timings["engine"] = self.usage.engine_seconds
        timings["total"] = total
        timings["orchestration"] = max(0.0, total - self.usage.engine_seconds - self.usage.reward_seconds)
        return DecodeResult(choices=choices, candidates=candidates, usage=self.usage, timings=timings, info=info)


class Decoder(ABC):
    """Base class of decoders. Subclasses set ``name`` (via :func:`register`) and ``Params``.

    ``streams_tokens`` says whether :meth:`stream` yields tokens as the engine decides them; decoders that must
    see every candidate before choosing stream the chosen answer after selection (the default :meth:`stream`).
    """

    name: ClassVar[str]
    Params: ClassVar[type[DecoderParams]] = DecoderParams
    """What a request may set (bounded; capped fields are checked against the server's limits)."""
    Options: ClassVar[type[DecoderParams]] = DecoderParams
    """What only the operator may set, under ``decoder_options.<name>`` in the configuration (file paths...)."""
    requires_reward: ClassVar[bool] = False
    streams_tokens: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, params: DecoderParams | None = None, options: DecoderParams | None = None):
        self.params = params if params is not None else self.Params()
        self.options = options if options is not None else self.Options()

    @abstractmethod
    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        """Produce ``request.n`` answers."""

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        """Yield :class:`StreamDelta` chunks of the answers, then the :class:`DecodeResult` last."""
        result = await self.decode(request, ctx)
        for i, choice in enumerate(result.choices):
            yield StreamDelta(
                index=i,
                text=choice.text,
                token_ids=choice.token_ids,
                logprobs=choice.logprobs,
                top_logprobs=choice.top_logprobs,
                finish_reason=choice.finish_reason,  # type: ignore[arg-type]
            )
        yield result


DECODERS: dict[str, type[Decoder]] = {}


def register(name: str) -> Callable[[type[Decoder]], type[Decoder]]:
    """Class decorator that makes a decoder available under ``name``."""

    def deco(cls: type[Decoder]) -> type[Decoder]:
        if name in DECODERS and DECODERS[name] is not cls:
            raise ValueError(f"decoder {name!r} is registered twice")
        cls.name = name
        DECODERS[name] = cls
        return cls

    return deco


_plugins_loaded = False


def decoder_registry() -> dict[str, type[Decoder]]:
    """Every registered decoder: built-ins plus the entry-point group ``alignd.decoders``."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group="alignd.decoders"):
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Decoder):
                register(ep.name)(obj)
    return dict(DECODERS)


def rank(candidates: Sequence[Candidate], key: Callable[[Candidate], Any] | None = None) -> list[Candidate]:
    """Scored candidates, best first by ``key`` (default: the reward); ties keep the lower index first."""
    key = key or (lambda c: c.reward)
    scored = [c for c in candidates if c.dropped is None and c.reward is not None and key(c) is not None]
    return sorted(scored, key=key, reverse=True)  # reverse=True keeps equal items in their original order


def ranked_or_raise(
    candidates: Sequence[Candidate], n: int, key: Callable[[Candidate], Any] | None = None
) -> list[Candidate]:
    """The best ``n`` scored candidates; if the rewards dropped every one, a :class:`RewardError` says why."""
    ranked = rank(candidates, key)
    if not ranked:
        reasons = sorted({c.dropped for c in candidates if c.dropped}) or ["no reward"]
        raise RewardError(f"every candidate was dropped: {'; '.join(reasons)}", reward="+".join(reasons))
    return ranked[:n]
