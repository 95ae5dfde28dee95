"""``self_consistency``: sample several answers, vote on their final answers (Wang et al. 2023), and stop as
soon as the vote is settled (Adaptive-Consistency, Aggarwal et al. 2023, "Let's Sample Step by Step").

Answers are drawn in rounds of ``round_size`` (ONE engine call each, ``n`` samples sharing the prefill). Each
sample's final answer is extracted (the last number by default; or the stripped text exactly; or a regular
expression the operator configured under ``decoder_options.self_consistency.patterns``) and voted on: a plain
majority, or weighted by a reward. With ``stop: adaptive`` the rounds end as soon as

* the leader cannot be overtaken by the samples still allowed (``max_samples``), or
* (majority votes) the posterior probability that the leader is the more frequent answer of the top two reaches
  ``confidence``: with counts v1 > v2, P(p1 > p2) under a Beta(v1 + 1, v2 + 1) posterior, Adaptive-Consistency's
  Beta stopping rule.

The returned answer is a sample with the winning final answer (the highest-reward one with ``vote: reward``);
``alignment.info`` carries the votes, the winner, the samples drawn and whether the vote stopped early.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..answers import exact, last_number
from ..engines.protocol import EngineInfo
from ..structured import AnswerFormat
from .context import DecodeContext
from .protocol import Decoder, DecoderParams, cap, register
from .types import Candidate, Cost, DecodeRequest, DecoderError, DecodeResult


class SelfConsistencyParams(DecoderParams):
    round_size: int = Field(4, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """Samples drawn per round (one engine call)."""
    max_samples: int = Field(16, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """Most samples drawn in all: the fixed-N budget the adaptive stop saves on."""
    extract: str = Field("last_number", max_length=64)
    """How a sample's final answer is read: ``last_number``, ``exact`` (the stripped, lower-cased text) or the
    name of an operator-configured pattern."""
    vote: Literal["majority", "reward"] = "majority"
    """``majority``: one vote per sample; ``reward``: each sample votes with weight exp(reward - best reward)."""
    stop: Literal["adaptive", "fixed"] = "adaptive"
    """``adaptive``: stop once the vote is settled; ``fixed``: always draw ``max_samples``."""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Majority votes stop when P(leader more frequent than the runner-up) reaches this."""

    @model_validator(mode="after")
    def _rounds_fit(self) -> SelfConsistencyParams:
        if self.round_size > self.max_samples:
            raise ValueError("round_size must not exceed max_samples")
        return self


class SelfConsistencyOptions(DecoderParams):
    patterns: dict[str, str] = Field(default_factory=dict)
    """Named regular expressions requests may pick in ``extract``; the answer is the last match's first group
    (or the whole match). Only the operator sets them: a request cannot send a pattern."""

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regular expression: {exc}") from None
        return patterns


def settled(counts: list[float], remaining: int) -> bool:
    """Whether the leader of ``counts`` (votes per answer) can no longer be overtaken by ``remaining`` votes.

    >>> settled([5, 1], 3), settled([5, 3], 3)
    (True, False)
    """
    top = sorted(counts, reverse=True) + [0.0, 0.0]
    return top[0] - top[1] > remaining


def leader_probability(v1: int, v2: int) -> float:
    """P(p1 > p2) for the top two answers' shares under a Beta(v1 + 1, v2 + 1) posterior (exact for integers:
    P(Binomial(v1 + v2 + 1, 1/2) <= v1)).

    >>> leader_probability(3, 0), round(leader_probability(2, 2), 3)
    (0.9375, 0.5)
    """
    n = v1 + v2 + 1
    return sum(math.comb(n, j) for j in range(v1 + 1)) / 2**n


@register("self_consistency")
class SelfConsistency(Decoder[SelfConsistencyParams]):
    """Majority (or reward-weighted) vote over sampled answers, stopping once the vote is settled."""

    Options = SelfConsistencyOptions
    options: SelfConsistencyOptions
    single_answer = True
    anytime = True
    structured_output = True
    description = "Self-consistency: vote on sampled final answers; adaptive stop once the vote is settled."

    def needs_reward(self) -> bool:
        return self.params.vote == "reward"

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        known = {"last_number", "exact", *self.options.patterns}
        if self.params.extract not in known:
            raise DecoderError(
                f"decoder.extract={self.params.extract!r} is not known here; use one of {sorted(known)}",
                "decoder.extract",
            )

    def worst_case(self, request: DecodeRequest) -> Cost:
        t = request.sampling.max_tokens
        prompt = len(request.prompt_token_ids)
        return Cost(
            prompt + self.params.max_samples * t,
            "decoder.max_samples",
            "max_samples x max_tokens",
            unit=prompt + self.params.round_size * t,
        )

    def answer_of(self, text: str, fmt: AnswerFormat | None = None) -> str | None:
        """The final answer ``extract`` reads from ``text`` (``None``: the sample gave none). An answer of a
        required shape (a JSON schema, tool calls) is its canonical form instead: the same object, or the same
        function called with the same arguments, is one answer however it was spaced or ordered."""
        if fmt is not None and (fmt.calls_tools or fmt.constraint() is not None):
            return fmt.key(text)
        how = self.params.extract
        if how == "last_number":
            return last_number(text)
        if how == "exact":
            return exact(text)
        matches = list(re.finditer(self.options.patterns[how], text))
        if not matches:
            return None
        last = matches[-1]
        return (last.group(1) if last.groups() else last.group(0)).strip()

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        p, s = self.params, request.sampling
        samples: list[Candidate] = []
        answers: list[str | None] = []
        votes: Counter[str] = Counter()
        rounds = 0
        early = False
        while len(samples) < p.max_samples:
            size = min(p.round_size, p.max_samples - len(samples))
            if rounds and not ctx.affordable(size * s.max_tokens):
                break
            with ctx.phase("generate"):
                [gen] = await ctx.engine.generate(
                    [request.prompt_token_ids],
                    s.but(n=size, seed=ctx.seed(s.seed, size)),
                    request.request_id if not rounds else f"{request.request_id}-r{rounds}",
                )
            fresh = [Candidate.of(c, index=len(samples) + i) for i, c in enumerate(gen.completions)]
            await ctx.score(request.prompt, fresh)
            samples.extend(fresh)
            answers.extend(self.answer_of(c.text, request.answer_format) for c in fresh)
            votes = self._tally(samples, answers)
            rounds += 1
            remaining = p.max_samples - len(samples)
            if p.stop == "adaptive" and remaining and votes and self._is_settled(votes, remaining):
                early = True
                break
        winner = max(votes, key=lambda a: (votes[a], -answers.index(a))) if votes else None
        chosen = self._representative(samples, answers, winner)
        for c, a in zip(samples, answers):
            c.score = votes.get(a, 0.0) if a is not None else None
        return ctx.result(
            request,
            [chosen],
            samples,
            winner=winner,
            votes=dict(votes.most_common()),
            answers=answers,
            samples=len(samples),
            stopped_early=early,
            rounds=rounds,
        )

    def _tally(self, samples: list[Candidate], answers: list[str | None]) -> Counter[str]:
        votes: Counter[str] = Counter()
        if self.params.vote == "majority":
            votes.update(a for a in answers if a is not None)
            return votes
        rewards = [c.reward for c in samples if c.reward is not None]
        best = max(rewards, default=0.0)
        for c, a in zip(samples, answers):
            if a is not None and c.reward is not None:
                votes[a] += math.exp(c.reward - best)
        return votes

    def _is_settled(self, votes: Counter[str], remaining: int) -> bool:
        counts = sorted(votes.values(), reverse=True)
        if settled(counts, remaining):  # weighted votes are each worth at most 1
            return True
        if self.params.vote != "majority":
            return False
        v1, v2 = int(counts[0]), int(counts[1]) if len(counts) > 1 else 0
        return leader_probability(v1, v2) >= self.params.confidence

    def _representative(self, samples: list[Candidate], answers: list[str | None], winner: str | None) -> Candidate:
        """The sample returned for the winning answer: the first (majority) or the best-rewarded (reward)."""
        pool = [c for c, a in zip(samples, answers) if a == winner] or samples
        if self.params.vote == "reward":
            return max(pool, key=lambda c: c.reward if c.reward is not None else -math.inf)
        return pool[0]
