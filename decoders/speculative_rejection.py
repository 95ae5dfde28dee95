"""``speculative_rejection``: best-of-N that stops its worst candidates early (Sun et al. 2024, "Fast Best-of-N
Decoding via Speculative Rejection").

Best-of-N spends N whole answers; most of them lose. Speculative rejection starts N0 candidates and, at decision
points (every ``chunk`` tokens, or at the token counts of ``schedule``), scores the partial answers with the
request's reward and stops the lowest-scoring ``rejection_rate`` of those still running. Survivors continue;
candidates that finish on their own keep their score. The answer is the best complete candidate. A reward whose
partial scores predict final ones (keyword coverage, similarity, a reward model) keeps the winner alive while the
engine stops paying for the losers.

Each round is ONE engine call (round 0: ``n=N0`` from the prompt, the prompt prefilled once; later: every
survivor's continuation, their prefixes read from vLLM's prefix cache) and ONE reward call for every candidate
that round touched. With ``rejection_rate=0`` every candidate runs to its end: best-of-N in chunks.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from .context import DecodeContext
from .protocol import Decoder, DecoderParams, cap, ranked_or_raise, register
from .types import Candidate, Cost, DecodeRequest, DecodeResult


class SpeculativeRejectionParams(DecoderParams):
    num_candidates: int = Field(16, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """N0, candidates started."""
    chunk: int = Field(16, ge=1, le=4096, json_schema_extra=cap("max_tokens"))
    """Tokens between decision points (unless ``schedule`` is given)."""
    schedule: list[int] | None = Field(None, min_length=1, max_length=64)
    """Decision points as token counts (increasing), e.g. ``[8, 16, 32]``; after the last, every ``chunk``."""
    rejection_rate: float = Field(0.5, ge=0.0, lt=1.0)
    """Fraction of the running candidates stopped at each decision point (the lowest partial rewards)."""
    min_survivors: int = Field(1, ge=1, le=4096)
    """Never stop so many that fewer than this keep running."""
    selection: Literal["complete", "any"] = "complete"
    """``complete``: the answer is the best candidate that finished; ``any``: rejected partial answers count too."""

    @field_validator("schedule")
    @classmethod
    def _increasing(cls, schedule: list[int] | None) -> list[int] | None:
        if schedule is not None and (any(t < 1 for t in schedule) or sorted(set(schedule)) != schedule):
            raise ValueError("schedule must list increasing positive token counts")
        return schedule


@register("speculative_rejection")
class SpeculativeRejection(Decoder[SpeculativeRejectionParams]):
    """Best-of-N with early rejection of the candidates whose partial answers score lowest."""

    structured_output = True
    continues_prefix = True
    requires_reward = True
    single_answer = True
    anytime = True
    description = "Best-of-N that scores partial answers every chunk and stops the worst fraction early."

    def worst_case(self, request: DecodeRequest) -> Cost:
        # Nothing rejected: every candidate to max_tokens, plus one new prompt token per continuation call.
        p, t = self.params, request.sampling.max_tokens
        points = self._points(t)
        prompt = len(request.prompt_token_ids)
        return Cost(
            prompt + p.num_candidates * (t + len(points)),
            "decoder.num_candidates",
            "num_candidates x max_tokens (if nothing is rejected)",
            unit=prompt + p.num_candidates * points[0],
        )

    def _points(self, max_tokens: int) -> list[int]:
        """Token counts at which the candidates are scored and the worst stopped (the last is max_tokens)."""
        p = self.params
        points = [t for t in (p.schedule or []) if t < max_tokens]
        last = points[-1] if points else 0
        while last + p.chunk < max_tokens:
            last += p.chunk
            points.append(last)
        return [*points, max_tokens]

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        p = self.params
        s = request.sampling
        cands: list[Candidate] = []
        running: list[Candidate] = []
        done = 0  # tokens every running candidate has
        rounds = 0
        for point in self._points(s.max_tokens):
            size = point - done
            if rounds and not ctx.affordable(len(running) * (size + 1)):
                break
            with ctx.phase("generate"):
                if not rounds:  # every candidate from the prompt: one call, n=N0, one prefill
                    [gen] = await ctx.engine.generate(
                        [request.prompt_token_ids],
                        s.but(n=p.num_candidates, max_tokens=size, seed=ctx.seed(s.seed, p.num_candidates)),
                        request.request_id,
                    )
                    parts = gen.completions
                else:  # every survivor's continuation: one call, their prefixes from the prefix cache
                    gens = await ctx.engine.generate(
                        [request.prompt_token_ids + c.token_ids for c in running],
                        request.continued(
                            s.but(
                                n=1,
                                max_tokens=size,
                                seed=ctx.seed(s.seed, len(running)),
                                min_tokens=max(0, s.min_tokens - done),
                            )
                        ),
                        f"{request.request_id}-r{rounds}",
                    )
                    parts = [g.completions[0] for g in gens]
            if not rounds:
                running = [Candidate(index=i, text="", token_ids=[], finish_reason=None) for i in range(len(parts))]
                cands = list(running)
            for c, part in zip(running, parts):
                # vLLM detokenizes a continuation in the context of its prefix and cuts it at a stop string
                c.token_ids += part.token_ids
                c.text += part.text
                c.finish_reason = part.finish_reason if part.finish_reason == "stop" or point == s.max_tokens else None
            done = point
            rounds += 1
            await ctx.score(request.prompt, running)
            still = [c for c in running if c.finish_reason is None and c.dropped is None]
            keep = max(p.min_survivors, len(still) - math.floor(p.rejection_rate * len(still)))
            if point < s.max_tokens and keep < len(still):
                ranked = sorted(still, key=lambda c: c.reward if c.reward is not None else -math.inf, reverse=True)
                for c in ranked[keep:]:
                    c.dropped = f"rejected after {point} tokens (partial reward {c.reward:.4g})"
                    c.finish_reason = "rejected"
            running = [c for c in running if c.finish_reason is None and c.dropped is None]
            if not running:
                break
        for c in running:  # stopped by the budget mid-answer
            c.finish_reason = "budget"
        pool = cands if p.selection == "any" else [c for c in cands if c.finish_reason in ("stop", "length")]
        if not pool:  # the budget stopped everything before any candidate finished: the best partial answer
            pool = [c for c in cands if c.finish_reason == "budget"]
        chosen = ranked_or_raise([_selectable(c) for c in pool], 1)
        return ctx.result(
            request,
            [cands[chosen[0].index]],
            cands,
            rounds=rounds,
            candidates_finished=sum(c.finish_reason in ("stop", "length") for c in cands),
        )


def _selectable(c: Candidate) -> Candidate:
    """``c`` as selection sees it: a rejected candidate is excluded from selection only by ``selection``."""
    if c.dropped is not None and c.dropped.startswith("rejected"):
        return Candidate(c.index, c.text, c.token_ids, c.finish_reason, c.reward, c.rewards)
    return c
