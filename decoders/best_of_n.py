"""``best_of_n``: sample N candidates, score them all, return the best; see the decoders page of the docs.

The N samples come from ONE engine call with ``n=N``: vLLM prefills the prompt once and forks N sequences from
it. All N are scored in ONE reward call. With a continuous reward the pick beats a fresh sample from the model
in N/(N+1) of prompts, and KL(best-of-N || model) <= log N - (N-1)/N (Beirami et al. 2024).

With a budget (``budget.max_engine_tokens`` or ``max_seconds``) too small for all N, the candidates are drawn in
rounds sized to what is left, and the best of those drawn is returned when the budget runs out (anytime).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence

from pydantic import Field

from ..engines.protocol import EngineInfo
from .allocation import allocate
from .context import DecodeContext
from .protocol import Decoder, DecoderParams, cap, ranked_or_raise, register, soft_pick
from .types import Candidate, Cost, DecodeRequest, DecoderError, DecodeResult


class BestOfNParams(DecoderParams):
    num_candidates: int = Field(4, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """N, the number of samples drawn and scored. The request's ``n`` best of them are returned."""
    round_size: int | None = Field(None, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """Candidates per engine call; default: all N in one call (a budget too small for them shrinks the rounds)."""
    allocate: bool = False
    """Several prompts in one request: ``pilot`` samples each, then the rest of the request's samples (its
    ``budget.max_engine_tokens``, else what ``num_candidates`` per prompt would cost) handed to the prompts whose
    rewards spread most (adaptive best-of-N; see :mod:`alignd.decoders.allocation`). One prompt: plain best-of-N."""
    pilot: int = Field(4, ge=2, le=4096, json_schema_extra=cap("max_candidates"))
    """``allocate``: samples per prompt in the pilot round."""
    max_per_prompt: int | None = Field(None, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """``allocate``: the most samples one prompt may get in all (default: twice ``num_candidates``)."""
    beta: float | None = Field(None, gt=0.0, le=1000.0)
    """Soft best-of-N (Verdun et al. 2025): return a candidate drawn with probability proportional to
    exp(reward / beta) instead of the best. Small beta is best-of-N, large beta is sampling; in between, the KL
    from the model (at most log N) falls as beta grows. Unset: the best."""


@register("best_of_n")
class BestOfN(Decoder[BestOfNParams]):
    """Draw N samples with the request's sampling settings, score them with the reward, return the argmax.

    Ties go to the lowest index. Sampling uses the request's temperature (1.0 unless set: the theory assumes
    samples from the model itself), top_p, max_tokens, stop and seed.

    >>> BestOfN(BestOfNParams(num_candidates=8)).params.num_candidates
    8
    """

    requires_reward = True
    anytime = True
    structured_output = True
    description = "Sample N candidates in one engine call, score all in one reward call, return the best."

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        if request.n > self.params.num_candidates:
            raise DecoderError(
                f"n={request.n} answers were asked for but only num_candidates={self.params.num_candidates} are "
                "drawn; raise decoder.num_candidates or lower n",
                "n",
            )

    def worst_case(self, request: DecodeRequest) -> Cost:
        n, t = self.params.num_candidates, request.sampling.max_tokens
        prompt = len(request.prompt_token_ids)  # the first round draws at least one candidate
        return Cost(prompt + n * t, "decoder.num_candidates", "num_candidates x max_tokens", unit=prompt + t)

    def decodes_together(self) -> bool:
        return self.params.allocate

    async def decode_together(
        self, requests: Sequence[DecodeRequest], contexts: Sequence[DecodeContext]
    ) -> list[DecodeResult]:
        """``allocate``: a pilot round for every prompt, then the rest of the budget where the expected gain of the
        best reward per engine token is highest; each prompt's ``alignment.info`` says what it got."""
        p = self.params
        requests = [self.prepare(r, c.engine, c.rewards) for r, c in zip(requests, contexts)]
        drawn: list[list[Candidate]] = [[] for _ in requests]

        async def draw(i: int, k: int, tag: str) -> None:
            r, ctx = requests[i], contexts[i]
            with ctx.phase("generate"):
                [gen] = await ctx.engine.generate(
                    [r.prompt_token_ids],
                    r.sampling.but(n=k, seed=ctx.seed(r.sampling.seed, k)),
                    f"{r.request_id}-{tag}",
                )
            fresh = [Candidate.of(c, index=len(drawn[i]) + j) for j, c in enumerate(gen.completions)]
            await ctx.score(r.prompt, fresh)
            drawn[i].extend(fresh)

        most = p.max_per_prompt or 2 * p.num_candidates
        pilot = min(p.pilot, most)
        await asyncio.gather(*(draw(i, pilot, "pilot") for i in range(len(requests))))
        costs = [max(1.0, statistics.fmean(c.num_tokens for c in cands)) for cands in drawn]
        # the prompt tokens a second call reads again: what the pilot's call did not find in the prefix cache
        overheads = [
            max(0.0, ctx.usage.engine_new_tokens - sum(c.num_tokens for c in cands))
            for ctx, cands in zip(contexts, drawn)
        ]
        sigmas = [_spread(cands) for cands in drawn]
        budget = contexts[0].budget.max_engine_tokens
        if budget is not None:
            spend = budget - sum(c.usage.engine_new_tokens for c in contexts)
        else:  # what fixed best-of-N would spend on the rest, moved to where it pays
            spend = sum((p.num_candidates - pilot) * cost for cost in costs)
        extra = allocate(sigmas, costs, [pilot] * len(requests), spend, most, overheads)
        await asyncio.gather(*(draw(i, k, "more") for i, k in enumerate(extra) if k))
        return [
            ctx.result(
                r, ranked_or_raise(cands, r.n), cands, pilot=pilot, allocated=k, samples=len(cands), reward_spread=sigma
            )
            for r, ctx, cands, k, sigma in zip(requests, contexts, drawn, extra, sigmas)
        ]

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        p = self.params
        prompt, per = len(request.prompt_token_ids), request.sampling.max_tokens
        size = p.round_size or p.num_candidates
        candidates: list[Candidate] = []
        rounds = 0
        while len(candidates) < p.num_candidates:
            # Size each round to the budget left: the prompt is paid once, each candidate up to max_tokens. The
            # first round draws at least one candidate, so a budget always buys an answer.
            left = ctx.tokens_left()
            fit = size if left is None else (left - (prompt if not rounds else 0)) // max(per, 1)
            want = min(size, p.num_candidates - len(candidates), fit)
            if candidates and (want < 1 or not ctx.affordable(want * per, measured=False)):
                ctx.budget_exhausted = True
                break
            want = max(want, 1)
            with ctx.phase("generate"):
                [gen] = await ctx.engine.generate(
                    [request.prompt_token_ids],
                    request.sampling.but(n=want, seed=ctx.seed(request.sampling.seed, want)),
                    request.request_id if not rounds else f"{request.request_id}-r{rounds}",
                )
            fresh = [Candidate.of(c, index=len(candidates) + i) for i, c in enumerate(gen.completions)]
            await ctx.score(request.prompt, fresh)
            candidates.extend(fresh)
            rounds += 1
        info = {"rounds": rounds} if rounds > 1 or ctx.budget_exhausted else {}
        ranked = ranked_or_raise(candidates, len(candidates))
        if p.beta is None:
            return ctx.result(request, ranked[: request.n], candidates, **info)
        chosen = soft_pick(ranked, request.n, p.beta, request.sampling.seed, lambda c: c.reward)
        return ctx.result(request, chosen, candidates, **info)


def _spread(candidates: Sequence[Candidate]) -> float:
    """The standard deviation of the scored candidates' rewards (0 with fewer than two)."""
    rewards = [c.reward for c in candidates if c.reward is not None and c.dropped is None]
    return statistics.stdev(rewards) if len(rewards) > 1 else 0.0
