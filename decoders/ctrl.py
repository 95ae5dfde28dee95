"""``ctrl``: CTRL-calibrated best-of-N, InfAlign's calibrate-and-transform at inference time (Balashankar et
al. 2024, "InfAlign: Inference-aware language model alignment", arXiv 2412.19792); see the decoders page of the docs.

Calibration (InfAlign, arXiv 2412.19792): C(x, y) = P_z[r(x,z) < r(x,y)] + 1/2 P_z[r(x,z) = r(x,y)] over K
reference samples z of the served model at temperature 1, i.e. y's estimated win rate against the model, in
[0, 1]. References are drawn in one engine call, scored in one reward call per reward and cached (key: prompt
tokens, model, reward name and version, sampling settings, K), so a repeated prompt costs nothing extra.

Transform Phi of C: ``identity``; ``exp``: exp(t*C), InfAlign's choice for best-of-N inference; ``neg_exp``:
-exp(-t*C), its choice for worst-of-N inference (jailbreak red-teaming). All three increase with C, so they pick
the same argmax; they differ in how ``select=sample`` spreads probability (``neg_exp`` punishes low C steeply,
``exp`` rewards high C steeply). What calibration adds over plain best-of-N:

* several rewards combined on one scale: the weighted mean of each reward's C (raw scales differ);
* ``select=sample``: draw the answer with probability proportional to exp(Phi(C)/beta), an importance-resampling
  approximation of the CTRL-optimal policy pi* ~ pi_ref * exp(Phi(C)/beta);
* ``select=threshold``: adaptive N, candidates drawn in rounds until one reaches C >= tau (or ``max_candidates``);
* calibrated scores in [0, 1] for every candidate, comparable across prompts.

With one reward and ``select=argmax`` the pick is plain best-of-N's: Phi is monotone and ties in C (several
candidates above every reference) are broken by the raw reward.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from ..engines.protocol import EngineInfo, SamplingConfig
from ..rewards.protocol import RewardError
from ..rewards.scoring import RewardSet, calibrate
from .context import DecodeContext
from .protocol import Decoder, DecoderParams, cap, ranked_or_raise, register, soft_pick
from .types import Candidate, Cost, DecodeRequest, DecoderError, DecodeResult


class CTRLParams(DecoderParams):
    num_candidates: int = Field(4, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """N, candidates drawn (per round, for ``threshold``: see ``round_size``)."""
    reference_samples: int = Field(32, ge=2, le=4096, json_schema_extra=cap("max_candidates"))
    """K, reference samples of the model per prompt that calibrate the reward (ignored for leave-one-out)."""
    calibration: Literal["reference", "leave_one_out"] = "reference"
    """``reference``: C against K cached reference samples; ``leave_one_out``: against the other candidates."""
    transform: Literal["identity", "exp", "neg_exp"] = "exp"
    """Phi: ``exp`` (best-of-N inference), ``neg_exp`` (worst-of-N inference, red-teaming), ``identity``."""
    t: float = Field(1.0, gt=0.0, le=100.0)
    """Temperature of the exponential transforms."""
    select: Literal["argmax", "sample", "threshold"] = "argmax"
    """How the answer is chosen from the calibrated, transformed scores."""
    beta: float = Field(1.0, gt=0.0, le=100.0)
    """``sample``: the answer is drawn with probability proportional to exp(Phi(C)/beta)."""
    tau: float = Field(0.9, ge=0.0, le=1.0)
    """``threshold``: stop at the first candidate whose calibrated reward reaches tau."""
    round_size: int = Field(2, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """``threshold``: candidates drawn per round."""
    max_candidates: int = Field(16, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """``threshold``: most candidates drawn in all rounds."""

    @model_validator(mode="after")
    def _consistent(self) -> CTRLParams:
        if self.calibration == "leave_one_out" and self.select == "threshold":
            raise ValueError("threshold selection needs reference calibration (a first candidate has no others)")
        if self.calibration == "leave_one_out" and self.num_candidates < 2:
            raise ValueError("leave_one_out calibration needs num_candidates >= 2")
        return self


def transform(c: float, kind: str, t: float) -> float:
    """InfAlign's transform Phi(C): identity, exp(t*C) or -exp(-t*C).

    >>> transform(0.5, "identity", 2.0), round(transform(0.5, "exp", 2.0), 4), round(transform(0.5, "neg_exp", 2.0), 4)
    (0.5, 2.7183, -0.3679)
    """
    if kind == "exp":
        return math.exp(t * c)
    if kind == "neg_exp":
        return -math.exp(-t * c)
    return c


@dataclass(slots=True)
class _References:
    per_reward: dict[str, list[float]]  # sorted rewards of the K references, per reward name


class ReferenceCache:
    """A bounded LRU of reference-sample rewards per (prompt, model, rewards, sampling, K), with hit counts."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._data: OrderedDict[tuple, _References] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> _References | None:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._data.move_to_end(key)
        return entry

    def put(self, key: tuple, entry: _References) -> None:
        self._data[key] = entry
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (the hit and miss counts, which are metrics, keep counting)."""
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


REFERENCE_CACHE = ReferenceCache()
"""Process-wide cache of reference rewards; the server exports its hits and misses as metrics."""


@register("ctrl")
class CTRL(Decoder[CTRLParams]):
    """CTRL-calibrated best-of-N: calibrate each reward against the model's own samples, transform, select."""

    requires_reward = True
    structured_output = True
    description = "InfAlign CTRL: rewards calibrated to win rates vs the model, transformed, then selected."

    def __init__(self, params=None, options=None, cache: ReferenceCache | None = None):
        super().__init__(params, options)
        self.cache = cache if cache is not None else REFERENCE_CACHE

    anytime = True  # threshold selection stops between rounds; argmax and sample draw their N at once

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        p = self.params
        if p.select == "threshold" and request.n > 1:
            raise DecoderError("threshold selection returns one answer; set n=1", "n")
        if p.select != "threshold" and request.n > p.num_candidates:
            raise DecoderError(f"n={request.n} is more than num_candidates={p.num_candidates}", "n")

    def worst_case(self, request: DecodeRequest) -> Cost:
        p, t = self.params, request.sampling.max_tokens
        drawn = p.max_candidates if p.select == "threshold" else p.num_candidates
        references = p.reference_samples if p.calibration == "reference" else 0
        param = (
            "decoder.reference_samples"
            if references > drawn
            else ("decoder.max_candidates" if p.select == "threshold" else "decoder.num_candidates")
        )
        prompt = len(request.prompt_token_ids)
        first = references + (p.round_size if p.select == "threshold" else drawn)
        return Cost(
            prompt + (references + drawn) * t, param, "(references + candidates) x max_tokens", prompt + first * t
        )

    @classmethod
    def collect_metrics(cls) -> Iterable[Any]:
        # The cache is process-wide; its counts are read on each scrape rather than pushed on each lookup.
        from prometheus_client.core import CounterMetricFamily

        hits = CounterMetricFamily("alignd_ctrl_reference_cache_hits", "CTRL reference samples served from cache.")
        hits.add_metric([], REFERENCE_CACHE.hits)
        misses = CounterMetricFamily("alignd_ctrl_reference_cache_misses", "CTRL reference samples drawn anew.")
        misses.add_metric([], REFERENCE_CACHE.misses)
        return (hits, misses)

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        p = self.params
        request = self.prepare(request, ctx.engine, ctx.rewards)
        rewards = ctx.reward_set
        references = None
        if p.calibration == "reference":
            references = await self._references(request, ctx, rewards)
        if p.select == "threshold":
            return await self._threshold(request, ctx, rewards, references)
        candidates = await self._draw(request, ctx, p.num_candidates, 0)
        await ctx.score(request.prompt, candidates)
        self._calibrate(candidates, rewards, references)
        chosen = self._select(candidates, request)
        return ctx.result(request, chosen, candidates)

    # ---- reference samples -----------------------------------------------------------------------------------

    def _reference_sampling(self, request: DecodeRequest, k: int) -> SamplingConfig:
        # Calibration is against pi_ref itself: temperature 1, no top-p/top-k truncation, the request's length
        # and stop settings (a reward can depend on length, so references must be answers of the same kind), under
        # the same structured-output constraint (a JSON answer is calibrated against the model's JSON answers).
        s = request.sampling
        return SamplingConfig(
            n=k,
            max_tokens=s.max_tokens,
            temperature=1.0,
            stop=s.stop,
            stop_token_ids=s.stop_token_ids,
            seed=None if s.seed is None else s.seed + 7919,
            constraint=s.constraint,
        )

    async def _references(self, request: DecodeRequest, ctx: DecodeContext, rewards: RewardSet) -> _References:
        p = self.params
        sampling = self._reference_sampling(request, p.reference_samples)
        key = (
            tuple(request.prompt_token_ids),
            ctx.engine.info.name,
            rewards.version,
            sampling.max_tokens,
            sampling.stop,
            sampling.stop_token_ids,
            sampling.seed,
            sampling.constraint,
            p.reference_samples,
        )
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with ctx.phase("reference_generate"):
            [gen] = await ctx.engine.generate([request.prompt_token_ids], sampling, f"{request.request_id}-ref")
        texts = [c.text for c in gen.completions]
        scores = await ctx.score_texts(request.prompt, texts)
        per_reward = {}
        for name, values in scores.per_reward.items():
            kept = sorted(v for v in values if v is not None)
            if len(kept) < 2:
                raise RewardError(f"reward {name!r} scored fewer than 2 reference samples", reward=name)
            per_reward[name] = kept
        entry = _References(per_reward)
        self.cache.put(key, entry)
        return entry

    # ---- candidates ------------------------------------------------------------------------------------------

    async def _draw(self, request: DecodeRequest, ctx: DecodeContext, n: int, round_index: int) -> list[Candidate]:
        s = request.sampling
        with ctx.phase("generate"):
            [gen] = await ctx.engine.generate(
                [request.prompt_token_ids], s.but(n=n, seed=ctx.seed(s.seed, n)), f"{request.request_id}-r{round_index}"
            )
        return [Candidate.of(c) for c in gen.completions]

    def _calibrate(self, candidates: list[Candidate], rewards: RewardSet, references: _References | None) -> None:
        """Write each candidate's combined calibrated reward C and its transformed score Phi(C)."""
        p = self.params
        weights = {t.reward.name: t.weight for t in rewards.terms}
        norm = sum(abs(w) for w in weights.values()) or 1.0
        for i, c in enumerate(candidates):
            if c.dropped is not None or c.reward is None:
                continue
            total = 0.0
            for name, w in weights.items():
                if references is not None:
                    refs = references.per_reward[name]
                else:  # leave-one-out: the other candidates are the reference pool
                    refs = sorted(o.rewards[name] for j, o in enumerate(candidates) if j != i and o.dropped is None)
                    if not refs:
                        raise DecoderError("leave_one_out needs at least two scored candidates", "decoder")
                total += w * calibrate(c.rewards[name] or 0.0, refs)  # not dropped: every reward scored it
            c.calibrated = total / norm
            c.score = transform(c.calibrated, p.transform, p.t)

    def _select(self, candidates: list[Candidate], request: DecodeRequest) -> list[Candidate]:
        p = self.params
        # Ties in Phi(C) (e.g. several candidates above every reference) go to the higher raw reward, then the
        # lower index, so one reward + argmax picks exactly what best_of_n picks.
        ranked = ranked_or_raise(
            candidates, len(candidates), key=lambda c: None if c.score is None else (c.score, c.reward)
        )
        if p.select == "argmax":
            return ranked[: request.n]
        return soft_pick(ranked, request.n, p.beta, request.sampling.seed, lambda c: c.score)

    async def _threshold(
        self, request: DecodeRequest, ctx: DecodeContext, rewards: RewardSet, references: _References | None
    ) -> DecodeResult:
        p = self.params
        candidates: list[Candidate] = []
        round_index = 0
        while len(candidates) < p.max_candidates:
            size = min(p.round_size, p.max_candidates - len(candidates))
            if candidates and not ctx.affordable(size * request.sampling.max_tokens):
                break  # the budget ran out: the best calibrated candidate so far
            fresh = await self._draw(request, ctx, size, round_index)
            for c in fresh:
                c.index = len(candidates) + c.index
            await ctx.score(request.prompt, fresh)
            self._calibrate(fresh, rewards, references)
            candidates.extend(fresh)
            round_index += 1
            hit = next((c for c in fresh if c.calibrated is not None and c.calibrated >= p.tau), None)
            if hit is not None:
                return ctx.result(request, [hit], candidates, threshold_reached=True, rounds=round_index)
        best = self._select(candidates, request)[:1]
        return ctx.result(request, best, candidates, threshold_reached=False, rounds=round_index)
