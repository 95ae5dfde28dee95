"""The values decoders take and give: a request, scored candidates, the work spent, the result.

>>> c = Candidate(index=0, text="Paris.", token_ids=[9, 4], finish_reason="stop", reward=0.7)
>>> c.num_tokens, c.reward
(2, 0.7)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engines.metering import DECODER, Meter
from ..engines.protocol import Completion, SamplingConfig
from ..rewards.protocol import Prompt


class DecoderError(ValueError):
    """A request a decoder cannot serve as asked (e.g. n above its candidates); HTTP 400 on ``param``."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Budget:
    """What one request may spend: engine tokens (generated + prompt tokens not from the prefix cache, the
    rewards' engine work included) and wall-clock seconds. ``None``: no bound of that kind."""

    max_engine_tokens: int | None = None
    max_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Cost:
    """A decoder's worst-case engine tokens for a request (its own work, rewards' not included) and the
    parameter that scales it most, which a refusal names."""

    tokens: int
    param: str
    why: str
    """How the worst case is reached, e.g. ``"top_k x (lookahead + 1) per token x max_tokens"``."""
    unit: int | None = None
    """For an anytime decoder, the most its first round or step can cost: what it spends before it can first
    stop for a budget (``None``: the whole worst case)."""


@dataclass(slots=True)
class DecodeRequest:
    """One prompt as a decoder sees it: prompt tokens, what rewards see of the prompt, and sampling settings."""

    request_id: str
    prompt_token_ids: list[int]
    prompt: Prompt
    sampling: SamplingConfig
    """The user's sampling settings (``n`` there is ignored: see :attr:`n`)."""
    n: int = 1
    """How many answers to return."""
    prepared_by: str | None = None
    """The decoder whose :meth:`~alignd.decoders.Decoder.prepare` checked (and possibly re-rendered) this request."""

    def continued(self, params: SamplingConfig) -> SamplingConfig:
        """``params`` for an engine call whose prompts are this prompt followed by a committed part of the answer
        (a lookahead, a block, a step, a resampled suffix): the request's structured-output constraint continued
        over that part, so the whole answer keeps its shape. Unchanged when the request asked for no shape.

        >>> from alignd.engines.protocol import Constraint
        >>> req = DecodeRequest("r", [1, 2, 3], "hi", SamplingConfig(constraint=Constraint.of("regex", "a+")))
        >>> req.continued(SamplingConfig(max_tokens=4)).constraint_start
        3
        """
        constraint = self.sampling.constraint
        if constraint is None:
            return params
        return params.but(constraint=constraint, constraint_start=len(self.prompt_token_ids))


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
    invalid: str | None = None
    """Why the answer is not valid in the request's format (structured output, tool calls): selection takes such
    a candidate only when no valid one is left."""
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @classmethod
    def of(cls, c: Completion, index: int | None = None) -> Candidate:
        """An engine completion as an unscored candidate (its log-probs kept for the OpenAI response), numbered
        ``index`` among the decode's candidates (default: its index in its engine call)."""
        return cls(
            index=c.index if index is None else index,
            text=c.text,
            token_ids=list(c.token_ids),
            finish_reason=c.finish_reason,
            logprobs=c.logprobs,
            top_logprobs=c.top_logprobs,
        )


@dataclass(slots=True)
class Usage:
    """Work a decode spent.

    ``engine_*`` count every token the engine processed because of this request (every candidate, reference
    sample and lookahead, and what rewards that run on an engine spent); :attr:`engine` keeps them by source
    (``decoder``, ``reward:<name>``).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reward_calls: int = 0
    candidates_scored: int = 0
    reward_seconds: float = 0.0
    reward_seconds_by_name: dict[str, float] = field(default_factory=dict)
    engine: Meter = field(default_factory=Meter)

    @property
    def engine_calls(self) -> int:
        return self.engine.total().calls

    @property
    def engine_requests(self) -> int:
        return self.engine.total().requests

    @property
    def engine_prompt_tokens(self) -> int:
        return self.engine.total().prompt_tokens

    @property
    def engine_completion_tokens(self) -> int:
        return self.engine.total().completion_tokens

    @property
    def engine_cached_tokens(self) -> int:
        return self.engine.total().cached_tokens

    @property
    def engine_tokens(self) -> int:
        """Prompt plus completion tokens the engine processed: the request's cost in engine work."""
        total = self.engine.total()
        return total.prompt_tokens + total.completion_tokens

    @property
    def engine_new_tokens(self) -> int:
        """What the engine computed anew: generated tokens plus prompt tokens not read from the prefix cache.
        Budgets (``budget.max_engine_tokens``) are counted in these."""
        total = self.engine.total()
        return total.completion_tokens + max(0, total.prompt_tokens - total.cached_tokens)

    @property
    def engine_seconds(self) -> float:
        """Wall time of the decoder's own engine calls (a reward's engine time is part of its reward time)."""
        return self.engine.work(DECODER).seconds

    def merge(self, other: Usage) -> None:
        """Add ``other``'s work to this one (the usage of a request with several prompts)."""
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.reward_calls += other.reward_calls
        self.candidates_scored += other.candidates_scored
        self.reward_seconds += other.reward_seconds
        for name, seconds in other.reward_seconds_by_name.items():
            self.reward_seconds_by_name[name] = self.reward_seconds_by_name.get(name, 0.0) + seconds
        self.engine.merge(other.engine)

    def as_dict(self) -> dict[str, Any]:
        total = self.engine.total()
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "engine_calls": total.calls,
            "engine_requests": total.requests,
            "engine_prompt_tokens": total.prompt_tokens,
            "engine_completion_tokens": total.completion_tokens,
            "engine_cached_tokens": total.cached_tokens,
            "engine_new_tokens": self.engine_new_tokens,
            "engine_seconds": self.engine_seconds,
            "engine_by_source": self.engine.as_dict(),
            "reward_calls": self.reward_calls,
            "candidates_scored": self.candidates_scored,
            "reward_seconds": self.reward_seconds,
            "reward_seconds_by_name": dict(self.reward_seconds_by_name),
        }


@dataclass(slots=True)
class DecodeResult:
    """What a decoder returns."""

    choices: list[Candidate]
    candidates: list[Candidate]
    usage: Usage
    timings: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    """Decoder-specific facts (e.g. whether a threshold was reached)."""
    prompt_logprobs: list[dict[int, float] | None] | None = None
    """Per prompt position, the log-probs of the prompt token and the top alternatives (``echo`` with
    ``logprobs``), when the decoder's engine call returned them."""
