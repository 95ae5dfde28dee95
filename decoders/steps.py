"""Step-level search, what ``step_beam`` (beam search over reasoning steps, as search-and-learn's) and
``particle_filter`` (Puri et al. 2025, "A Probabilistic Inference Approach to Inference-Time Scaling of LLMs",
as its_hub offers it) share.

A step is the text up to a separator (``step_separator``: the request's, else the operator's
``decoder_options``, else a blank line), at most ``max_step_tokens`` long. Every live path's next step comes from
ONE engine call with ``stop`` at the separator (kept in the text, so the next step starts after it), and every
new path is scored in ONE reward call: a process reward (``prm``) or any outcome reward, which sees the path so
far. Both decoders stream the prefix every live path shares as soon as it is settled, honour the request's budget
(they stop between steps with the best path so far) and abort all engine work if the client leaves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import Field

from ..engines.protocol import Completion, StreamDelta
from .context import DecodeContext
from .protocol import DecoderParams, P, StreamingDecoder, cap
from .types import Candidate, Cost, DecodeRequest


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
    structured_output = True
    continues_prefix = True
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
        params = request.continued(
            s.but(
                n=n,
                max_tokens=max(1, min(self.params.max_step_tokens, room)),
                stop=tuple(dict.fromkeys((self.separator(), *s.stop))),
                include_stop_str_in_output=True,
                seed=ctx.seed(s.seed, len(paths) * n),
            )
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


def candidates_of(paths: Sequence[Path]) -> list[Candidate]:
    return [
        Candidate(index=i, text=p.text, token_ids=p.token_ids, finish_reason=p.finished or "length", reward=p.score)
        for i, p in enumerate(paths)
    ]
