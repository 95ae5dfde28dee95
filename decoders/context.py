"""What a decoder works with: a metered engine, the request's rewards, and the clock of its phases.

The context meters everything: the decoder's engine calls (through :attr:`DecodeContext.engine`), the engine
calls its rewards make (a judge's verdicts, counted under ``reward:<name>``), reward calls and their time. A
decoder never counts by hand; :meth:`DecodeContext.result` packages what was spent.

>>> from alignd.engines.protocol import SamplingConfig
>>> ctx = DecodeContext(engine)  # doctest: +SKIP
>>> [gen] = await ctx.engine.generate([[1, 2, 3]], SamplingConfig(n=4), "req-1")  # doctest: +SKIP
>>> ctx.usage.engine_calls  # doctest: +SKIP
1
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..engines.grammar import shape_for
from ..engines.metering import DECODER, MeteredEngine, metering
from ..engines.protocol import Engine, bound_session
from ..rewards.protocol import Prompt
from ..rewards.scoring import RewardSet, Scores
from ..structured import AnswerFormat
from ..tracing import current, span
from .types import Budget, Candidate, DecodeRequest, DecoderError, DecodeResult, Usage


class DecodeContext:
    """The (metered) engine, the request's rewards, other served models, and the phase clock of one decode."""

    def __init__(
        self,
        engine: Engine,
        rewards: RewardSet | None = None,
        engines: dict[str, Engine] | None = None,
        budget: Budget | None = None,
        session: str | None = None,
        answer_format: AnswerFormat | None = None,
    ):
        self.usage = Usage()
        self.answer_format = answer_format
        """The shape the request's answers must have (structured output, tool calls; its constraint is already in
        the request's sampling): finished candidates that are not valid in it are passed over by selection."""
        self.session = session
        """The request this decode belongs to: every engine call it causes, its rewards' included, is served by the
        replica the engine chose for it (see :class:`~alignd.engines.protocol.Engine`)."""
        self.trace_parent: Any = None
        """The span this decode's spans hang under: the server's decode span, then each phase's inside it."""
        self.engine = MeteredEngine(engine, self.usage.engine, DECODER, lambda: self.trace_parent, session)
        self.rewards = rewards
        self.budget = budget or Budget()
        self._engines = engines or {}
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()
        self.budget_exhausted = False
        """Set by :meth:`affordable` when the budget stopped the decoder; reported in ``alignment.info``."""
        self._unit_start = 0
        self._seeds_drawn = 0

    def seed(self, seed: int | None, draws: int) -> int | None:
        """The seed for this request's next engine call, which draws ``draws`` completions (prompts x n).

        An engine seeds a call's completions ``seed .. seed + draws - 1`` (vLLM gives the ``j``-th of ``n``
        ``seed + j``; engines move each prompt past the ones before it), so calls seeded the same would repeat one
        another's random streams: a second round of best-of-N would redraw the first's answers. Each call gets
        the next unused range instead; a request's samples are then the same however they are split into rounds.

        >>> ctx = DecodeContext(engine=None)  # type: ignore[arg-type]
        >>> ctx.seed(7, 4), ctx.seed(7, 4), ctx.seed(None, 4)
        (7, 11, None)
        """
        if seed is None:
            return None
        first = seed + self._seeds_drawn
        self._seeds_drawn += draws
        return first

    # ---- budget ----------------------------------------------------------------------------------------------

    def tokens_left(self) -> int | None:
        """Engine tokens the budget still allows (``None``: unbounded)."""
        if self.budget.max_engine_tokens is None:
            return None
        return self.budget.max_engine_tokens - self.usage.engine_new_tokens

    def affordable(self, tokens: int = 0, *, measured: bool = True) -> bool:
        """Whether the next round or step, estimated at ``tokens``, fits what is left of the budget (time
        included). An anytime decoder asks before each round or step after the first; a ``False`` marks the
        decode as stopped by its budget. With ``measured``, the next unit is taken to cost at least what the last
        one really did (an estimate cannot see prefix-cache misses); without, ``tokens`` is an exact bound."""
        spent = self.usage.engine_new_tokens
        if measured:
            tokens = max(tokens, spent - self._unit_start)
        self._unit_start = spent
        left = self.tokens_left()
        over_time = self.budget.max_seconds is not None and time.perf_counter() - self._start >= self.budget.max_seconds
        if over_time or (left is not None and tokens > left):
            self.budget_exhausted = True
            return False
        return True

    def budget_info(self) -> dict[str, Any]:
        """What ``alignment.info`` says of the budget (nothing when the request set none)."""
        if self.budget == Budget():
            return {}
        return {"budget_exhausted": self.budget_exhausted, "engine_tokens_spent": self.usage.engine_new_tokens}

    def engine_for(self, model: str | None, param: str) -> MeteredEngine:
        """Another served model (a baseline for rollouts), metered into the same usage; ``None``: this one."""
        if model is None or model == self.engine.info.name:
            return self.engine
        engine = self._engines.get(model)
        if engine is None:
            raise DecoderError(f"model {model!r} is not served here; available: {sorted(self._engines)}", param)
        return MeteredEngine(engine, self.usage.engine, DECODER, lambda: self.trace_parent, self.session)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``timings[name]``; with tracing, the block is a span
        ``decoder.<name>`` (a round or step of the decoder) and the engine calls inside hang under it."""
        start = time.perf_counter()
        outer = self.trace_parent
        with span(f"decoder.{name}", parent=outer, attach=False) as current:
            self.trace_parent = current if current is not None else outer
            try:
                yield
            finally:
                self.trace_parent = outer
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    @property
    def reward_set(self) -> RewardSet:
        """The request's rewards; a decoder that needs them declares ``requires_reward`` and may rely on this."""
        if self.rewards is None:
            raise DecoderError("this decoder needs a reward: set 'reward' to a declared reward", "reward")
        return self.rewards

    async def score_texts(self, prompt: Prompt, texts: Sequence[str]) -> Scores:
        """Score texts with the request's rewards (one batched call per reward), metered as reward work."""
        rewards = self.reward_set
        # Rewards that run on an engine report to this request's meter, labelled with their own names.
        with (
            self.phase("reward"),
            metering(self.usage.engine, "reward"),
            bound_session(self.session),
            current(self.trace_parent),
        ):
            scores = await rewards.score(prompt, texts)
        u = self.usage
        u.reward_calls += 1
        u.candidates_scored += len(texts)
        for name, seconds in scores.seconds.items():
            u.reward_seconds_by_name[name] = u.reward_seconds_by_name.get(name, 0.0) + seconds
        u.reward_seconds = self.timings.get("reward", 0.0)
        return scores

    async def score(self, prompt: Prompt, candidates: Sequence[Candidate]) -> Scores | None:
        """Score ``candidates`` in one batched call per reward and write the scores onto them (no-op without
        rewards: ``sample`` scores only when a reward was named). A finished candidate that is not a valid answer
        of the request's :attr:`answer_format` (JSON off its schema, a tool call its function refuses) is marked
        :attr:`~alignd.decoders.Candidate.invalid` with the reason, so selection passes it over."""
        if self.rewards is None or not candidates:
            return None
        scores = await self.score_texts(prompt, [c.text for c in candidates])
        for i, c in enumerate(candidates):
            c.reward = scores.total[i]
            c.rewards = {name: values[i] for name, values in scores.per_reward.items()}
            c.dropped = scores.dropped.get(i)
            c.invalid = self.invalid(c)
        return scores

    def shaped(self, request: DecodeRequest, prefix: Sequence[int], row: dict[int, float]) -> dict[int, float]:
        """``row``, log-probs of next tokens after the prompt and the committed answer ``prefix``, less the tokens
        the request's structured-output grammar forbids there (unchanged without a shape).

        A decoder that chooses among the model's top-k tokens needs this even when its engine call carried the
        constraint: vLLM reports log-probs from the logits before its grammar mask. The token the engine itself
        chose under the mask is allowed, so add it to the row first (:func:`~alignd.decoders.search.next_row`)
        and a step never runs out of choices."""
        constraint = request.sampling.constraint
        if constraint is None or not row:
            return row
        hf = getattr(self.engine.tokenizer, "hf", None)
        if hf is None:
            raise DecoderError("this engine's tokenizer cannot compile a structured-output grammar", "decoder")
        info = self.engine.info  # compiled once per tokenizer and constraint (shape_for caches)
        shape = shape_for(hf, info.vocab_size, constraint, info.json_whitespace)
        allowed = set(shape.allowed(prefix, list(row)))
        return {token: lp for token, lp in row.items() if token in allowed}

    def invalid(self, c: Candidate) -> str | None:
        """Why the finished candidate ``c`` is not a valid answer of the request's format (``None``: it is, it is
        unfinished, or the request asked for no format)."""
        if self.answer_format is None or c.finish_reason is None:
            return None
        return self.answer_format.problem(c.text)

    def result(
        self, request: DecodeRequest, choices: list[Candidate], candidates: list[Candidate], **info: Any
    ) -> DecodeResult:
        """Close the clock and package a :class:`DecodeResult`."""
        total = time.perf_counter() - self._start
        self.usage.prompt_tokens = len(request.prompt_token_ids)
        self.usage.completion_tokens = sum(c.num_tokens for c in choices)
        timings = dict(self.timings)
        timings["engine"] = self.usage.engine_seconds
        timings["total"] = total
        timings["orchestration"] = max(0.0, total - self.usage.engine_seconds - self.usage.reward_seconds)
        info = {**info, **self.budget_info()}
        return DecodeResult(choices=choices, candidates=candidates, usage=self.usage, timings=timings, info=info)
