"""``particle_filter``: particle filtering over reasoning steps (Puri et al. 2025, "A Probabilistic Inference
Approach to Inference-Time Scaling of LLMs using Particle-Based Monte Carlo Methods", as its_hub offers it). See
:mod:`alignd.decoders.steps` for what a step is and what both step searches share."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Literal

from pydantic import Field

from ..engines.protocol import StreamDelta
from .context import DecodeContext
from .protocol import cap, register, softmax
from .steps import Path, StepParams, StepSearch, Streamer, candidates_of
from .types import DecodeRequest, DecodeResult


class ParticleFilterParams(StepParams):
    particles: int = Field(8, ge=1, le=1024, json_schema_extra=cap("max_candidates"))
    """P, paths extended by one sampled step each, then resampled by weight."""
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    """Weights are softmax(step reward / temperature) over the particles."""
    select: Literal["weight", "sample"] = "weight"
    """The answer: the particle whose final reward is highest, or one drawn by weight."""


@register("particle_filter")
class ParticleFilter(StepSearch[ParticleFilterParams]):
    """Particle filtering over steps: P particles each extended by one sampled step, weighted by the step reward
    (softmax with ``temperature``), resampled with replacement, until every particle ends or ``max_steps``."""

    description = "Particle filtering over steps: extend P particles a step, weight by step reward, resample."

    def width(self) -> int:
        return self.params.particles

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        p = self.params
        rng = random.Random(request.sampling.seed)
        particles = [Path() for _ in range(p.particles)]
        seen: list[Path] = []
        streamer = Streamer()
        steps = 0
        resamples: list[list[int]] = []
        while any(x.finished is None for x in particles) and steps < p.max_steps:
            live = [x for x in particles if x.finished is None]
            if steps and not ctx.affordable(len(live) * (p.max_step_tokens + 1)):
                break
            grown = iter(await self.expand(request, ctx, live, 1, steps))
            particles = [next(grown)[0] if x.finished is None else x for x in particles]
            fresh = [x for x in particles if x.steps == steps + 1]
            await self.score(request, ctx, fresh)
            seen.extend(fresh)
            steps += 1
            weights = softmax([x.score for x in particles], p.temperature)
            picks = rng.choices(range(len(particles)), weights, k=len(particles))
            resamples.append(picks)
            particles = [replace(particles[i], token_ids=list(particles[i].token_ids)) for i in picks]
            if (
                delta := streamer.settled([x for x in particles if x.finished is None])
            ) is not None and delta.token_ids:
                yield delta
        if p.select == "weight":
            best = max(particles, key=lambda x: x.score if x.score is not None else -math.inf)
        else:
            best = particles[
                rng.choices(range(len(particles)), softmax([x.score for x in particles], p.temperature))[0]
            ]
        if best.finished is None:
            best.finished = "budget" if ctx.budget_exhausted else "length"
        yield streamer.rest(best)
        candidates = candidates_of(seen)
        chosen = next(c for c in candidates if c.token_ids == best.token_ids and c.text == best.text)
        yield ctx.result(
            request, [replace(chosen, finish_reason=best.finished)], candidates, steps=steps, resamples=resamples
        )
