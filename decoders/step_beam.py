"""``step_beam``: beam search over reasoning steps, as search-and-learn's (Snell et al. 2024, "Scaling LLM Test-Time
Compute Optimally can be More Effective than Scaling Model Parameters"). See :mod:`alignd.decoders.steps` for
what a step is and what both step searches share."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import replace

from pydantic import Field

from ..engines.protocol import StreamDelta
from .context import DecodeContext
from .protocol import cap, register
from .steps import Path, StepParams, StepSearch, Streamer, candidates_of
from .types import DecodeRequest, DecodeResult


class StepBeamParams(StepParams):
    beam_width: int = Field(4, ge=1, le=256, json_schema_extra=cap("max_candidates"))
    """N, paths kept after every step."""
    expansions: int = Field(4, ge=1, le=256, json_schema_extra=cap("max_candidates"))
    """M, next steps sampled from every kept path (N x M in one engine call)."""


@register("step_beam")
class StepBeam(StepSearch[StepBeamParams]):
    """Beam search over steps: N paths, each expanded by M sampled next steps in one engine call, all scored in
    one reward call, the best N kept, until every path ends or ``max_steps``."""

    description = "Beam search over reasoning steps: N beams x M sampled next steps, scored per step, best N kept."

    def width(self) -> int:
        return self.params.beam_width * self.params.expansions

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        p = self.params
        beams, done, seen = [Path()], [], []
        streamer = Streamer()
        steps = 0
        while beams and steps < p.max_steps:
            if steps and not ctx.affordable(len(beams) * p.expansions * (p.max_step_tokens + 1)):
                break
            children = [c for group in await self.expand(request, ctx, beams, p.expansions, steps) for c in group]
            await self.score(request, ctx, children)
            seen.extend(children)
            steps += 1
            ranked = sorted(children, key=lambda x: x.score, reverse=True)  # stable: ties keep sample order
            done.extend(c for c in ranked[: p.beam_width] if c.finished)
            beams = [c for c in ranked[: p.beam_width] if not c.finished]
            if len(done) >= p.beam_width:
                break
            if (delta := streamer.settled(beams)) is not None and delta.token_ids:
                yield delta
        pool = done + beams
        best = max(pool, key=lambda x: x.score if x.score is not None else -math.inf)
        if best.finished is None:
            best.finished = "budget" if ctx.budget_exhausted else "length"
        yield streamer.rest(best)
        candidates = candidates_of(seen)
        chosen = next(c for c, path in zip(candidates, seen) if path is best)
        yield ctx.result(request, [replace(chosen, finish_reason=best.finished)], candidates, steps=steps)
