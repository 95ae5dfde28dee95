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

Votes can also weigh samples by the ranks of a reward (``borda``; with the ``self_certainty`` reward, the
reward-free voting of Kang et al. 2025) or by the samples' own confidence (``confidence``: DeepConf, Fu et al.
2025, :mod:`alignd.decoders.confidence`), whose online variant sets a threshold from a warm-up round and aborts
every later sample whose confidence falls under it mid-generation; these stop once the leader holds
``consensus`` of the weighted votes.

The returned answer is a sample with the winning final answer (the highest-reward one with ``vote: reward`` or
``borda``, the most confident with ``confidence``); ``alignment.info`` carries the votes, the winner, the samples
drawn, how many were stopped, and whether the vote stopped early.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..answers import exact, last_number
from ..engines.protocol import EngineInfo, SamplingConfig
from ..structured import AnswerFormat
from .confidence import percentile, token_confidence, trace_confidence
from .context import DecodeContext
from .protocol import Decoder, DecoderParams, cap, check_top_k, register
from .types import Candidate, Cost, DecodeRequest, DecoderError, DecodeResult


class SelfConsistencyParams(DecoderParams):
    round_size: int = Field(4, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """Samples drawn per round (one engine call)."""
    warmup: int | None = Field(None, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """Samples in the first round (default ``round_size``): DeepConf's N_init, whose confidences set the online
    threshold."""
    max_samples: int = Field(16, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """Most samples drawn in all: the fixed-N budget the adaptive stop saves on."""
    extract: str = Field("last_number", max_length=64)
    """How a sample's final answer is read: ``last_number``, ``exact`` (the stripped, lower-cased text) or the
    name of an operator-configured pattern."""
    vote: Literal["majority", "reward", "borda", "confidence"] = "majority"
    """``majority``: one vote per sample; ``reward``: each sample votes with weight exp(reward - best reward);
    ``borda``: the sample ranked r of N by the reward votes (N - r + 1)^borda_power (with the ``self_certainty``
    reward, Kang et al. 2025's self-certainty voting); ``confidence``: DeepConf (Fu et al. 2025), the most
    confident ``keep`` share of samples vote with their confidence, read from their own top log-probs."""
    stop: Literal["adaptive", "fixed"] = "adaptive"
    """``adaptive``: stop once the vote is settled; ``fixed``: always draw ``max_samples``."""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Majority votes stop when P(leader more frequent than the runner-up) reaches this."""
    consensus: float = Field(0.95, gt=0.5, le=1.0)
    """``borda`` and ``confidence`` votes stop when the leader holds this share of the weighted votes (DeepConf's
    tau)."""
    borda_power: float = Field(1.0, ge=0.0, le=4.0)
    """p of Borda votes (the paper reports p from 0.3 to 1.2)."""
    confidence_top_k: int = Field(5, ge=1, le=20)
    """``confidence``: top log-probs per token read for the token confidence."""
    window: int = Field(32, ge=1, le=4096)
    """``confidence``: tokens per sliding group (the paper's 2,048 is for traces of thousands of tokens)."""
    trace: Literal["lowest_group", "bottom_10"] = "lowest_group"
    """``confidence``: a trace's confidence is its lowest group confidence, or the mean of its lowest 10%."""
    keep: float = Field(0.9, gt=0.0, le=1.0)
    """``confidence``: the share of most confident samples that vote (eta: 0.1 aggressive, 0.9 conservative);
    online, the share of the warm-up at or above the threshold it sets."""
    online: bool = False
    """``confidence``: DeepConf online. The first round (the warm-up) sets the threshold, the confidence of its
    (1 - keep) quantile; every later sample is stopped (its engine request aborted) as soon as a group's
    confidence falls under it, and does not vote; every sample at or above the threshold votes. With ``stop:
    adaptive`` the vote is counted again each time a later sample finishes, and once it is settled the samples
    still running are stopped too."""

    @model_validator(mode="after")
    def _rounds_fit(self) -> SelfConsistencyParams:
        for name in ("round_size", "warmup"):
            if (getattr(self, name) or 0) > self.max_samples:
                raise ValueError(f"{name} must not exceed max_samples")
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


def _mean(values: list[float], end: int, window: int) -> float:
    """The mean of the ``window`` values ending at index ``end``."""
    return sum(values[end - window + 1 : end + 1]) / window


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
        return self.params.vote in ("reward", "borda")

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        known = {"last_number", "exact", *self.options.patterns}
        if self.params.extract not in known:
            raise DecoderError(
                f"decoder.extract={self.params.extract!r} is not known here; use one of {sorted(known)}",
                "decoder.extract",
            )
        if self.params.vote == "confidence":
            check_top_k(self.params.confidence_top_k, engine, "decoder.confidence_top_k")

    def worst_case(self, request: DecodeRequest) -> Cost:
        t = request.sampling.max_tokens
        prompt = len(request.prompt_token_ids)
        return Cost(
            prompt + self.params.max_samples * t,
            "decoder.max_samples",
            "max_samples x max_tokens",
            unit=prompt + max(self.params.round_size, self.params.warmup or 0) * t,
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
        if p.vote == "confidence":  # each sample's own top log-probs say how sure it was
            s = s.but(logprobs=max(s.logprobs or 0, p.confidence_top_k))
        samples: list[Candidate] = []
        answers: list[str | None] = []
        votes: Counter[str] = Counter()
        threshold: float | None = None
        rounds = 0
        early = False

        def settles(finished: list[Candidate]) -> bool:
            """Whether the vote is settled once ``finished`` (this round's samples done so far) join it."""
            nonlocal early
            if p.stop != "adaptive":
                return False
            for c in finished:
                c.score = self._confidence(c)
            extra = [self.answer_of(c.text, ctx.answer_format) for c in finished]
            votes = self._tally(samples + finished, answers + extra, threshold)
            early = bool(votes) and self._is_settled(votes, p.max_samples - len(samples) - len(finished))
            return early

        while len(samples) < p.max_samples:
            wanted = p.round_size if rounds else p.warmup or p.round_size
            size = min(wanted, p.max_samples - len(samples))
            if rounds and not ctx.affordable(size * s.max_tokens):
                break
            rid = request.request_id if not rounds else f"{request.request_id}-r{rounds}"
            with ctx.phase("generate"):
                if threshold is None:
                    [gen] = await ctx.engine.generate(
                        [request.prompt_token_ids], s.but(n=size, seed=ctx.seed(s.seed, size)), rid
                    )
                    fresh = [Candidate.of(c, index=len(samples) + i) for i, c in enumerate(gen.completions)]
                else:
                    fresh = await self._draw_online(request, ctx, s, size, rid, threshold, len(samples), settles)
            await ctx.score(request.prompt, [c for c in fresh if c.finish_reason != "abort"])
            if p.vote == "confidence":
                for c in fresh:
                    c.score = self._confidence(c)
                if p.online and threshold is None:
                    threshold = percentile([c.score for c in fresh if c.score is not None], 100 * (1 - p.keep))
            samples.extend(fresh)
            answers.extend(None if c.dropped else self.answer_of(c.text, ctx.answer_format) for c in fresh)
            votes = self._tally(samples, answers, threshold)
            rounds += 1
            remaining = p.max_samples - len(samples)
            if early or (p.stop == "adaptive" and remaining and votes and self._is_settled(votes, remaining)):
                early = True  # (set already when the vote settled while the round's samples were running)
                break
        winner = max(votes, key=lambda a: (votes[a], -answers.index(a))) if votes else None
        chosen = self._representative(samples, answers, winner)
        confidences = {c.index: c.score for c in samples} if p.vote == "confidence" else None
        for c, a in zip(samples, answers):
            c.score = votes.get(a, 0.0) if a is not None else None
        extra = {"threshold": threshold, "confidences": confidences} if confidences is not None else {}
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
            stopped_samples=sum(c.finish_reason == "abort" for c in samples),
            **extra,
        )

    def _confidence(self, c: Candidate) -> float | None:
        """A finished sample's trace confidence (``None`` for a sample stopped mid-way)."""
        if c.finish_reason == "abort":
            return None
        p = self.params
        values = [token_confidence(row, p.confidence_top_k) for row in c.top_logprobs or []]
        return trace_confidence(values, p.window, p.trace)

    async def _draw_online(
        self,
        request: DecodeRequest,
        ctx: DecodeContext,
        s: SamplingConfig,
        size: int,
        rid: str,
        threshold: float,
        first: int,
        settles: Callable[[list[Candidate]], bool],
    ) -> list[Candidate]:
        """``size`` samples streamed side by side (one engine request each, the prompt from the prefix cache), each
        stopped, its request aborted, once a window of its tokens falls under ``threshold``; and all of them as
        soon as the ones finished so far ``settles`` the vote (DeepConf checks consensus after every trace)."""
        p = self.params
        seed = ctx.seed(s.seed, size)
        finished: list[Candidate] = []
        halt = asyncio.Event()

        async def one(i: int) -> Candidate:
            c = Candidate(index=first + i, text="", token_ids=[], finish_reason=None, logprobs=[], top_logprobs=[])
            values: list[float] = []
            params = s.but(n=1, seed=None if seed is None else seed + i)
            stream = ctx.engine.stream(request.prompt_token_ids, params, f"{rid}-{i}")
            try:
                async for d in stream:
                    c.text += d.text
                    c.token_ids.extend(d.token_ids)
                    c.logprobs.extend(d.logprobs or [])
                    c.top_logprobs.extend(d.top_logprobs or [])
                    before = len(values)
                    values.extend(token_confidence(row, p.confidence_top_k) for row in d.top_logprobs or [])
                    c.finish_reason = d.finish_reason or c.finish_reason
                    if halt.is_set() and c.finish_reason is None:
                        c.finish_reason = "abort"
                        c.dropped = f"stopped after {len(values)} tokens: the vote was settled without it"
                        break
                    # every window that ends at one of this delta's tokens (a delta can carry several)
                    low = next(
                        (
                            g
                            for end in range(max(before, p.window - 1), len(values))
                            if (g := _mean(values, end, p.window)) < threshold
                        ),
                        None,
                    )
                    if low is not None:  # the rule stops it here, even if this delta also ended it
                        c.finish_reason = "abort"
                        c.dropped = (
                            f"stopped after {len(values)} tokens: a group confidence of {low:.4g} fell under the "
                            f"warm-up threshold {threshold:.4g}"
                        )
                        break
            finally:
                await stream.aclose()  # an early stop aborts the engine request
            if c.finish_reason != "abort" and not halt.is_set():
                finished.append(c)
                if settles(finished):
                    halt.set()
            return c

        return list(await asyncio.gather(*(one(i) for i in range(size))))

    def _tally(
        self, samples: list[Candidate], answers: list[str | None], threshold: float | None = None
    ) -> Counter[str]:
        """Votes per answer. Confidence votes come from the most confident ``keep`` share of the samples (offline),
        or, online once the warm-up set ``threshold``, from every sample at or above it: the warm-up's confident
        ones and every later one that ran to its end (as DeepConf's online vote)."""
        votes: Counter[str] = Counter()
        p = self.params
        voters = [(c, a) for c, a in zip(samples, answers) if a is not None]
        if p.vote == "majority":
            votes.update(a for _, a in voters)
        elif p.vote == "reward":
            best = max((c.reward for c, _ in voters if c.reward is not None), default=0.0)
            for c, a in voters:
                if c.reward is not None:
                    votes[a] += math.exp(c.reward - best)
        elif p.vote == "borda":
            ranked = sorted((x for x in voters if x[0].reward is not None), key=lambda x: -x[0].reward)
            for r, (_, a) in enumerate(ranked, start=1):
                votes[a] += (len(ranked) - r + 1) ** p.borda_power
        else:
            scored = sorted((x for x in voters if x[0].score is not None), key=lambda x: -x[0].score)
            if threshold is None:
                kept = scored[: max(1, math.ceil(p.keep * len(scored)))]
            else:
                kept = [(c, a) for c, a in scored if c.score >= threshold]
            for c, a in kept:
                votes[a] += c.score
        return votes

    def _is_settled(self, votes: Counter[str], remaining: int) -> bool:
        counts = sorted(votes.values(), reverse=True)
        if self.params.vote in ("borda", "confidence"):  # weights are not bounded by 1: the leader's share decides
            total = sum(counts)
            return total > 0 and counts[0] / total >= self.params.consensus
        if settled(counts, remaining):  # weighted votes are each worth at most 1
            return True
        if self.params.vote != "majority":
            return False
        v1, v2 = int(counts[0]), int(counts[1]) if len(counts) > 1 else 0
        return leader_probability(v1, v2) >= self.params.confidence

    def _representative(self, samples: list[Candidate], answers: list[str | None], winner: str | None) -> Candidate:
        """The sample returned for the winning answer: the first (majority) or the best-rewarded (reward)."""
        pool = [c for c, a in zip(samples, answers) if a == winner] or samples
        if self.params.vote in ("reward", "borda"):
            return max(pool, key=lambda c: c.reward if c.reward is not None else -math.inf)
        if self.params.vote == "confidence":
            return max(pool, key=lambda c: c.score if c.score is not None else -math.inf)
        return pool[0]
