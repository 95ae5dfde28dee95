"""Step-level search: ``step_beam`` (beam search over reasoning steps, as search-and-learn's) and
``particle_filter`` (Puri et al. 2025, "A Probabilistic Inference Approach to Inference-Time Scaling of LLMs",
as its_hub offers it).

A step is the text up to a separator (``step_separator``: the request's, else the operator's
``decoder_options``, else a blank line), at most ``max_step_tokens`` long. Every live path's next step comes from
ONE engine call with ``stop`` at the separator (kept in the text, so the next step starts after it), and every
new path is scored in ONE reward call: a process reward (``prm``) or any outcome reward, which sees the path so
far. Both decoders stream the prefix every live path shares as soon as it is settled, honour the request's budget
(they stop between steps with the best path so far) and abort all engine work if the client leaves.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import Field

from ..engines.protocol import Completion, StreamDelta
from .context import DecodeContext
from .protocol import DecoderParams, P, StreamingDecoder, cap, register
from .types import Candidate, Cost, DecodeRequest, DecodeResult


class StepOptions(DecoderParams):
    step_separator: str = Field("\n\n", min_length=1, max_length=32)
    """The operator's default separator between steps (a request may set its own)."""


class StepParams(DecoderParams):
    step_separator: str | None = Field(None, min_length=1, max_length=32)
    """Where a step ends; default: the operator's (a blank line unless configured)."""
    max_step_tokens: int = Field(64, ge=1, le=4096, json_schema_extra=cap("max_tokens"))
    """Longest step, in tokens."""
    max_steps: int = Field(16, ge=1, le=256)
    """Most steps before the search returns the best path it has."""


class StepBeamParams(StepParams):
    beam_width: int = Field(4, ge=1, le=256, json_schema_extra=cap("max_candidates"))
    """N, paths kept after every step."""
    expansions: int = Field(4, ge=1, le=256, json_schema_extra=cap("max_candidates"))
    """M, next steps sampled from every kept path (N x M in one engine call)."""


class ParticleFilterParams(StepParams):
    particles: int = Field(8, ge=1, le=1024, json_schema_extra=cap("max_candidates"))
    """P, paths extended by one sampled step each, then resampled by weight."""
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    """Weights are softmax(step reward / temperature) over the particles."""
    select: Literal["weight", "sample"] = "weight"
    """The answer: the particle whose final reward is highest, or one drawn by weight."""


@dataclass(slots=True)
class Path:
    """A partial answer: its text, tokens and steps so far, how it ended, and the reward of it so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    steps: int = 0
    finished: str | None = None
    score: float | None = None
    origin: int = 0
    """The index of the candidate (path) this one was made as, for the candidates list."""

    def extended(self, c: Completion, separator: str, max_tokens: int) -> Path:
        ids = self.token_ids + list(c.token_ids)
        finished = None
        if c.finish_reason == "stop" and c.stop_reason != separator:
            finished = "stop"  # EOS, or one of the request's own stop strings
        elif len(ids) >= max_tokens:
            finished = "length"
        return Path(self.text + c.text, ids, self.steps + 1, finished)


class StepSearch(StreamingDecoder[P]):
    """What step_beam and particle_filter share: expanding live paths by a step, scoring, streaming."""

    Options = StepOptions
    options: StepOptions
    requires_reward = True
    single_answer = True
    anytime = True

    def separator(self) -> str:
        return self.params.step_separator or self.options.step_separator

    def width(self) -> int:
        """Paths expanded at every step x samples per path."""
        raise NotImplementedError

    def worst_case(self, request: DecodeRequest) -> Cost:
        p = self.params
        per_step = self.width() * (p.max_step_tokens + 1)
        steps = min(p.max_steps, request.sampling.max_tokens)
        prompt = len(request.prompt_token_ids)
        return Cost(
            prompt + steps * per_step,
            "decoder.max_steps",
            "paths x samples x max_step_tokens per step",
            prompt + per_step,
        )

    async def expand(
        self, request: DecodeRequest, ctx: DecodeContext, paths: Sequence[Path], n: int, step: int
    ) -> list[list[Path]]:
        """``n`` sampled next steps of every path, all in one engine call."""
        s = request.sampling
        room = min(s.max_tokens - len(p.token_ids) for p in paths)
        params = s.but(
            n=n,
            max_tokens=max(1, min(self.params.max_step_tokens, room)),
            stop=tuple(dict.fromkeys((self.separator(), *s.stop))),
            include_stop_str_in_output=True,
            seed=ctx.seed(s.seed, len(paths) * n),
        )
        with ctx.phase("expand"):
            gens = await ctx.engine.generate(
                [request.prompt_token_ids + p.token_ids for p in paths], params, f"{request.request_id}-s{step}"
            )
        return [[p.extended(c, self.separator(), s.max_tokens) for c in g.completions] for p, g in zip(paths, gens)]

    async def score(self, request: DecodeRequest, ctx: DecodeContext, paths: Sequence[Path]) -> None:
        """Score every path (the answer so far) in one reward call; a path the reward dropped scores -inf."""
        scores = await ctx.score_texts(request.prompt, [p.text for p in paths])
        for p, value in zip(paths, scores.total):
            p.score = -math.inf if value is None else value


class Streamer:
    """Streams the text every live path shares, once it is settled (it can no longer change)."""

    def __init__(self) -> None:
        self.sent = 0
        self.text = ""

    def settled(self, paths: Sequence[Path]) -> StreamDelta | None:
        if not paths:
            return None
        common = paths[0].token_ids
        for p in paths[1:]:
            k = 0
            while k < min(len(common), len(p.token_ids)) and common[k] == p.token_ids[k]:
                k += 1
            common = common[:k]
        if len(common) <= self.sent:
            return None
        # the text of the shared tokens: where every path's text agrees (whole characters only)
        texts = [p.text for p in paths]
        prefix = texts[0][: min(map(len, texts))]
        for t in texts[1:]:
            k = 0
            while k < len(prefix) and prefix[k] == t[k]:
                k += 1
            prefix = prefix[:k]
        new_ids, self.sent = common[self.sent :], len(common)
        delta = StreamDelta(index=0, text=prefix[len(self.text) :], token_ids=new_ids)
        self.text = prefix if len(prefix) > len(self.text) else self.text
        return delta

    def rest(self, best: Path) -> StreamDelta:
        """The chosen path's text after what was streamed, ending the stream."""
        finish = best.finished or "length"
        return StreamDelta(
            index=0,
            text=best.text[len(self.text) :],
            token_ids=best.token_ids[self.sent :],
            finish_reason=finish,  # type: ignore[arg-type]
        )


def _candidates(paths: Sequence[Path]) -> list[Candidate]:
    return [
        Candidate(index=i, text=p.text, token_ids=p.token_ids, finish_reason=p.finished or "length", reward=p.score)
        for i, p in enumerate(paths)
    ]


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
        candidates = _candidates(seen)
        chosen = next(c for c, path in zip(candidates, seen) if path is best)
        yield ctx.result(request, [replace(chosen, finish_reason=best.finished)], candidates, steps=steps)


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
        candidates = _candidates(seen)
        chosen = next(c for c in candidates if c.token_ids == best.token_ids and c.text == best.text)
        yield ctx.result(
            request, [replace(chosen, finish_reason=best.finished)], candidates, steps=steps, resamples=resamples
        )


def softmax(values: Sequence[float | None], temperature: float) -> list[float]:
    """Weights proportional to exp(value / temperature); a missing or -inf value weighs nothing (all missing:
    uniform).

    >>> [round(w, 3) for w in softmax([0.0, math.log(3)], 1.0)]
    [0.25, 0.75]
    """
    finite = [v for v in values if v is not None and v != -math.inf]
    if not finite:
        return [1.0 / len(values)] * len(values)
    top = max(finite)
    raw = [0.0 if v is None or v == -math.inf else math.exp((v - top) / temperature) for v in values]
    total = sum(raw)
    return [r / total for r in raw]
