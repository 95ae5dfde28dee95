"""Metering engine work: every engine call a request causes is counted, labelled by who caused it.

A decode meters its own engine calls (source ``decoder``) through the :class:`MeteredEngine` its context hands
it. Rewards that run on an engine (a judge, the DPO implicit reward) are built once at start-up and shared by
all requests, so they cannot be handed a per-request meter; their engines are wrapped in a :class:`MeteredEngine`
without a meter of its own, which reports to the *ambient* meter: the one the current task set with
:func:`metering`, under the source label set with :func:`attributed_to` (``reward:judge``). Context variables
follow asyncio tasks, so concurrent requests never count into each other's meters.

>>> meter = Meter()
>>> meter.work("decoder").add(requests=2, prompt_tokens=10, completion_tokens=4)
>>> meter.total().as_dict()["prompt_tokens"], meter.as_dict()["decoder"]["calls"]
(10, 1)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..tracing import set_attributes, span
from .protocol import Engine, EngineInfo, Generation, SamplingConfig, StreamDelta, Tokenizer, current_session

DECODER = "decoder"
"""The source label of a decoder's own engine work."""


def reward_source(name: str) -> str:
    """The source label of the engine work a reward causes."""
    return f"reward:{name}"


@dataclass(slots=True)
class EngineWork:
    """Engine work of one source: batched calls, sequences submitted, tokens processed and wall time."""

    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0

    def add(
        self,
        *,
        requests: int,
        prompt_tokens: int,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
        seconds: float = 0.0,
        calls: int = 1,
    ) -> None:
        self.calls += calls
        self.requests += requests
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cached_tokens += cached_tokens
        self.seconds += seconds

    def merge(self, other: EngineWork) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Meter:
    """Engine work by source (``decoder``, ``reward:<name>``)."""

    def __init__(self) -> None:
        self.by_source: dict[str, EngineWork] = {}

    def work(self, source: str) -> EngineWork:
        work = self.by_source.get(source)
        if work is None:
            work = self.by_source[source] = EngineWork()
        return work

    def merge(self, other: Meter) -> None:
        for source, work in other.by_source.items():
            self.work(source).merge(work)

    def total(self) -> EngineWork:
        out = EngineWork()
        for work in self.by_source.values():
            out.merge(work)
        return out

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {source: work.as_dict() for source, work in sorted(self.by_source.items())}


_AMBIENT: ContextVar[tuple[Meter, str] | None] = ContextVar("alignd_meter", default=None)


@contextmanager
def metering(meter: Meter, source: str) -> Iterator[None]:
    """Make ``meter`` the ambient meter of this task (and of tasks it starts), counting under ``source``."""
    token = _AMBIENT.set((meter, source))
    try:
        yield
    finally:
        _AMBIENT.reset(token)


@contextmanager
def attributed_to(source: str) -> Iterator[None]:
    """Count the ambient meter's work under ``source`` inside the block (no-op without an ambient meter)."""
    current = _AMBIENT.get()
    if current is None:
        yield
        return
    token = _AMBIENT.set((current[0], source))
    try:
        yield
    finally:
        _AMBIENT.reset(token)


class MeteredEngine:
    """An :class:`Engine` that counts every call's tokens and time into a meter.

    With ``meter`` given, work is counted there under ``source``; without, it goes to the ambient meter (and is
    not counted when there is none, e.g. a reward scored outside any request).
    """

    def __init__(
        self,
        engine: Engine,
        meter: Meter | None = None,
        source: str = DECODER,
        trace_parent: Callable[[], Any] | None = None,
        session: str | None = None,
    ):
        self.inner = engine
        self._meter = meter
        self._source = source
        self._session = session
        """The session every call belongs to (the request); default: the one bound to the task, if any."""
        self._trace_parent = trace_parent
        """Gives the span each call's span hangs under (a decoder's current phase); default: the current span."""

    @property
    def info(self) -> EngineInfo:
        return self.inner.info

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inner.tokenizer

    def _work(self) -> EngineWork | None:
        if self._meter is not None:
            return self._meter.work(self._source)
        ambient = _AMBIENT.get()
        return ambient[0].work(ambient[1]) if ambient is not None else None

    async def start(self) -> None:
        await self.inner.start()

    async def shutdown(self) -> None:
        await self.inner.shutdown()

    async def check_health(self) -> None:
        await self.inner.check_health()

    def _session_of(self, session: str | None) -> str | None:
        return session or self._session or current_session()

    def _source_label(self) -> str | None:
        if self._meter is not None:
            return self._source
        ambient = _AMBIENT.get()
        return ambient[1] if ambient is not None else None

    @contextmanager
    def _call(self, kind: str, request_id: str, prompts: int, params: SamplingConfig | None) -> Iterator[Any]:
        """A span for one engine call (nothing without tracing), with what was asked. A stream's span is not made
        current: the stream is an async generator, which may resume in another task."""
        with span(
            f"engine.{kind}",
            parent=self._trace_parent() if self._trace_parent is not None else None,
            attach=kind != "stream",
            model=self.info.name,
            source=self._source_label(),
            request_id=request_id,
            prompts=prompts,
            n=params.n if params else None,
            max_tokens=params.max_tokens if params else None,
        ) as current:
            yield current

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingConfig, request_id: str, *, session: str | None = None
    ) -> list[Generation]:
        work = self._work()
        start = time.perf_counter()
        with self._call("generate", request_id, len(prompts), params) as current:
            gens = await self.inner.generate(prompts, params, request_id, session=self._session_of(session))
            # Once per prompt: its n samples share one prefill (vLLM's own prompt counter counts it n times).
            tokens = {
                "prompt_tokens": sum(len(g.prompt_token_ids) for g in gens),
                "completion_tokens": sum(g.completion_tokens for g in gens),
                "cached_tokens": sum(g.num_cached_tokens for g in gens),
            }
            set_attributes(current, **tokens)
        if work is not None:
            work.add(requests=len(gens), seconds=time.perf_counter() - start, **tokens)
        return gens

    async def stream(
        self, prompt: Sequence[int], params: SamplingConfig, request_id: str, *, session: str | None = None
    ) -> AsyncIterator[StreamDelta]:
        work = self._work()
        if work is not None:
            work.add(requests=1, prompt_tokens=len(prompt))
        start = time.perf_counter()
        completion = cached = 0
        with self._call("stream", request_id, 1, params) as current:
            try:
                async for delta in self.inner.stream(prompt, params, request_id, session=self._session_of(session)):
                    completion += len(delta.token_ids)
                    cached += delta.num_cached_tokens or 0
                    if work is not None:
                        work.completion_tokens += len(delta.token_ids)
                        work.cached_tokens += delta.num_cached_tokens or 0
                    yield delta
            finally:
                set_attributes(current, prompt_tokens=len(prompt), completion_tokens=completion, cached_tokens=cached)
                if work is not None:
                    work.seconds += time.perf_counter() - start

    async def continuation_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        request_id: str,
        *,
        session: str | None = None,
    ) -> list[list[float]]:
        work = self._work()
        start = time.perf_counter()
        tokens = {
            "prompt_tokens": sum(len(p) + len(c) for p, c in zip(prompts, continuations)),
            "completion_tokens": len(prompts),  # engines generate one token per sequence to read prompt log-probs
        }
        with self._call("continuation_logprobs", request_id, len(prompts), None) as current:
            out = await self.inner.continuation_logprobs(
                prompts, continuations, request_id, session=self._session_of(session)
            )
            set_attributes(current, **tokens)
        if work is not None:
            work.add(requests=len(prompts), seconds=time.perf_counter() - start, **tokens)
        return out

    async def abort(self, request_ids: Sequence[str]) -> None:
        await self.inner.abort(request_ids)
