"""The engine adapter for a fleet of remote vLLM servers, spoken to over their OpenAI-compatible API.

One :class:`RemoteEngine` fronts one or more ``vllm serve`` processes (``python -m
vllm.entrypoints.openai.api_server``) that serve the same model. Every decoder works on it unchanged, because
everything the engine protocol needs is in vLLM's ``/v1/completions``:

- prompts travel as token ids, and ``return_token_ids`` gives the sampled token ids back;
- top-k log-probs come from ``logprobs``, with ``return_tokens_as_token_ids`` so each alternative is named by
  its id (``token_id:N``) rather than by an ambiguous string, and a judge's verdict tokens from
  ``logprob_token_ids``;
- continuation log-probs come from ``prompt_logprobs=0`` with one generated token, as in process;
- a request is aborted by closing its connection (vLLM aborts a request whose client went away).

Tokenizing and chat templates stay local: the engine loads the model's tokenizer from a folder on disk, so
prompts are tokenized exactly as the in-process adapter would.

**Balancing.** Each call goes to the healthy server with the fewest outstanding requests. Ties (an idle fleet)
are broken by a hash of the prompt's first tokens, so the successive steps of one search, and requests that
share a system prompt, find their prefix in the same server's prefix cache. All prompts of one
:meth:`RemoteEngine.generate` call go to one server, which schedules them together.

**Failures.** A background loop probes ``GET /health`` on every server. A connection error (refused, reset,
closed mid-response) takes the server out of rotation at once and the call is retried on another one, up to
``retries`` times; nothing else is retried (a timeout or a 5xx would only double the load). A stream that loses
its server after some tokens resumes on another from the prompt plus the tokens already sent, so the client
sees one uninterrupted answer; for greedy decoding it is the same answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import Field, SecretStr

from ..secrets import shown_url
from ..tracing import inject
from .protocol import (
    EngineInfo,
    EngineUnavailable,
    EngineUpstreamError,
    Generation,
    SamplingConfig,
    StreamDelta,
    continuation_logprobs,
    first_error,
    seeded_apart,
)
from .registry import EngineAdapter, EngineOptions, register
from .remote_wire import base_url, cached_tokens, completion_body, raise_for_status, stream_deltas, to_generation
from .tokenizer import HFTokenizer

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "this server is gone or unreachable", as opposed to "this request failed": only these are
# retried on another server. ReadError and RemoteProtocolError are what a server killed mid-response produces.
_CONNECTION_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError)

_AFFINITY_TOKENS = 64
"""Prompt tokens hashed to break balancing ties (enough to cover a chat template's system prompt)."""


class RemoteOptions(EngineOptions):
    """How alignd reaches a fleet of vLLM OpenAI-compatible servers serving one model."""

    urls: list[str] = Field(min_length=1)
    """Base URLs of the servers, e.g. ``http://gpu1:8000`` (a trailing ``/v1`` is accepted)."""
    served_model_name: str | None = None
    """The model name the servers answer to (their ``--served-model-name``); default: the first they list."""
    api_key: SecretStr | None = None
    """Bearer key the servers expect (their ``--api-key``)."""
    timeout_s: float = Field(600.0, gt=0)
    """Longest one engine call may take; past it the call fails (it is not retried)."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """Longest a connection attempt may take before the server counts as unreachable."""
    retries: int = Field(2, ge=0)
    """Further servers to try after a connection error (only connection errors are retried)."""
    health_interval_s: float = Field(5.0, gt=0)
    """Seconds between ``GET /health`` probes of each server; a server back to 200 rejoins the rotation."""
    startup_timeout_s: float = Field(900.0, gt=0)
    """How long start-up waits for the first server to become healthy (vLLM may still be loading weights)."""
    max_connections: int = Field(256, ge=1)
    """Pooled HTTP connections per alignd process, over all servers."""
    max_logprobs: int = Field(20, ge=0)
    """The servers' ``--max-logprobs`` (vLLM's default is 20)."""


@dataclass(eq=False, slots=True)
class Backend:
    """One vLLM server and what the balancer knows about it."""

    url: str
    healthy: bool = False
    outstanding: int = 0
    requests: int = 0
    """Engine requests sent here (one per prompt of a call)."""
    failures: int = 0
    """Connection errors seen here."""
    last_error: str = "not probed yet"

    @property
    def shown(self) -> str:
        """The URL as logs, metrics and errors show it (a password in it masked)."""
        return shown_url(self.url)


class _ServerGone(Exception):
    """A connection-level failure of one server, carrying what was already streamed from it."""

    def __init__(self, backend: Backend, cause: BaseException):
        super().__init__(f"{backend.shown}: {type(cause).__name__}: {cause}")
        self.backend = backend


@register("remote")
class RemoteEngine(EngineAdapter[RemoteOptions]):
    """:class:`~alignd.engines.protocol.Engine` backed by one or more remote vLLM OpenAI servers.

    >>> engine = RemoteEngine("llama", "/models/llama", RemoteOptions(urls=["http://gpu1:8000"]))  # doctest: +SKIP
    >>> await engine.start()  # doctest: +SKIP
    >>> [gen] = await engine.generate([engine.tokenizer.encode("Hi")], SamplingConfig(n=4), "req-1")  # doctest: +SKIP
    """

    tokenizer_only = True
    _live: ClassVar[weakref.WeakSet[RemoteEngine]] = weakref.WeakSet()
    """Every remote engine of this process, for :meth:`collect_metrics`."""

    def __init__(self, name: str, tokenizer_path: str, options: RemoteOptions | dict[str, Any]):
        self.name = name
        self.tokenizer_path = tokenizer_path
        self.options: RemoteOptions = self.parse_options(options)
        self.backends = [Backend(base_url(u)) for u in options.urls]
        self.failovers = 0
        """Calls moved to another server after a connection error (streams resumed included)."""
        self.info = EngineInfo(name=name, max_model_len=0, vocab_size=0, max_logprobs=0, path=tokenizer_path)
        self.tokenizer: HFTokenizer | None = None  # type: ignore[assignment]
        self.served_model = options.served_model_name or ""
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task | None = None
        self._inflight: dict[str, set[asyncio.Task]] = {}
        self._aborts: dict[str, asyncio.Event] = {}
        self._live.add(self)

    @classmethod
    def collect_metrics(cls) -> Iterable[Any]:
        """Per-server state of every remote engine's fleet: up, outstanding requests, requests sent, connection
        errors, failovers."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily(
            "alignd_remote_server_up", "1 if the remote vLLM server is in rotation.", labels=["model", "url"]
        )
        outstanding = GaugeMetricFamily(
            "alignd_remote_server_outstanding",
            "Engine requests waiting on the remote server now.",
            labels=["model", "url"],
        )
        sent = CounterMetricFamily(
            "alignd_remote_server_requests", "Engine requests sent to the remote server.", labels=["model", "url"]
        )
        errors = CounterMetricFamily(
            "alignd_remote_server_connection_errors",
            "Connection errors that took the remote server out of rotation.",
            labels=["model", "url"],
        )
        failovers = CounterMetricFamily(
            "alignd_remote_failovers",
            "Engine calls moved to another server after a connection error.",
            labels=["model"],
        )
        for engine in list(cls._live):
            for b in engine.backends:
                labels = [engine.name, b.shown]
                up.add_metric(labels, 1.0 if b.healthy else 0.0)
                outstanding.add_metric(labels, b.outstanding)
                sent.add_metric(labels, b.requests)
                errors.add_metric(labels, b.failures)
            failovers.add_metric([engine.name], engine.failovers)
        return (up, outstanding, sent, errors, failovers)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the tokenizer, wait for a healthy server, read the served model's facts, start health probes."""
        if self._client is not None:
            return
        from transformers import AutoConfig, AutoTokenizer

        hf = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.tokenizer_path)
        self.tokenizer = HFTokenizer(hf)
        try:
            config = await asyncio.to_thread(AutoConfig.from_pretrained, self.tokenizer_path)
            vocab_size = int(getattr(config, "vocab_size", 0) or len(hf))
        except (OSError, ValueError):  # a tokenizer-only folder
            vocab_size = len(hf)
        opts = self.options
        headers = {"Authorization": f"Bearer {opts.api_key.get_secret_value()}"} if opts.api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(opts.timeout_s, connect=opts.connect_timeout_s),
            limits=httpx.Limits(max_connections=opts.max_connections, max_keepalive_connections=opts.max_connections),
        )
        deadline = time.monotonic() + opts.startup_timeout_s
        while not await self._probe_all():
            if time.monotonic() > deadline:
                await self.shutdown()
                raise EngineUnavailable(f"no server of model {self.name!r} became healthy: {self._states()}")
            await asyncio.sleep(min(2.0, opts.health_interval_s))
        card = await self._model_card()
        self.info = EngineInfo(
            name=self.name,
            max_model_len=int(card.get("max_model_len") or 0),
            vocab_size=vocab_size,
            max_logprobs=opts.max_logprobs,
            path=self.tokenizer_path,
            extra={"engine": "remote", "servers": [b.shown for b in self.backends], "served_model": self.served_model},
        )
        self._health_task = asyncio.create_task(self._health_loop(), name=f"health-{self.name}")
        log.info(
            "remote engine %s ready: %d/%d servers healthy, model %r, max_model_len=%d",
            self.name,
            sum(b.healthy for b in self.backends),
            len(self.backends),
            self.served_model,
            self.info.max_model_len,
        )

    async def _model_card(self) -> dict[str, Any]:
        """The served model's entry in ``/v1/models``; fixes ``served_model`` when it was not configured."""
        backend = next(b for b in self.backends if b.healthy)
        response = await self._http().get(backend.url + "/v1/models")
        raise_for_status(response)
        cards = response.json().get("data") or []
        if not cards:
            raise EngineUnavailable(f"{backend.shown} serves no model")
        if not self.served_model:
            self.served_model = cards[0]["id"]
        for card in cards:
            if card.get("id") == self.served_model:
                return card
        raise EngineUnavailable(
            f"{backend.shown} does not serve {self.served_model!r}; it serves {[c.get('id') for c in cards]}"
        )

    async def shutdown(self) -> None:
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for tasks in list(self._inflight.values()):
            for t in tasks:
                t.cancel()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def check_health(self) -> None:
        if self._client is None:
            raise EngineUnavailable(f"model {self.name!r} is not connected yet")
        if not any(b.healthy for b in self.backends):
            raise EngineUnavailable(f"no server of model {self.name!r} is healthy: {self._states()}")

    def _states(self) -> str:
        return "; ".join(f"{b.shown}: {'ok' if b.healthy else b.last_error}" for b in self.backends)

    async def _probe(self, backend: Backend) -> bool:
        try:
            response = await self._http().get(backend.url + "/health", timeout=min(5.0, self.options.timeout_s))
            ok, why = response.status_code == 200, f"/health answered {response.status_code}"
        except httpx.HTTPError as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
        if ok != backend.healthy:
            state = "up" if ok else f"down ({why})"
            log.log(logging.INFO if ok else logging.WARNING, "server %s %s", backend.shown, state)
        backend.healthy = ok
        backend.last_error = "" if ok else why
        return ok

    async def _probe_all(self) -> bool:
        """Probe every server now; True if at least one is healthy."""
        return any(await asyncio.gather(*(self._probe(b) for b in self.backends)))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            await self._probe_all()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailable(f"model {self.name!r} is not serving")
        return self._client

    # ---- balancing and failover ------------------------------------------------------------------------------

    def _pick(self, prompt: Sequence[int], avoid: set[Backend]) -> Backend | None:
        """The healthy server with the fewest outstanding requests; ties go to the one the prompt hashes to."""
        candidates = [b for b in self.backends if b.healthy and b not in avoid]
        if not candidates:
            return None
        least = min(b.outstanding for b in candidates)
        tied = [b for b in candidates if b.outstanding == least]
        digest = hashlib.blake2b(json.dumps(list(prompt[:_AFFINITY_TOKENS])).encode(), digest_size=8).digest()
        return tied[int.from_bytes(digest, "big") % len(tied)]

    async def _choose(self, prompt: Sequence[int], avoid: set[Backend]) -> Backend | None:
        """:meth:`_pick`, re-probing the fleet first when every server is marked down (one may be back)."""
        backend = self._pick(prompt, avoid)
        if backend is None and await self._probe_all():
            backend = self._pick(prompt, avoid)
        return backend

    def _mark_down(self, backend: Backend, error: BaseException) -> None:
        backend.failures += 1
        if backend.healthy:
            log.warning("server %s taken out of rotation: %s", backend.shown, error)
        backend.healthy = False
        backend.last_error = str(error)

    async def _with_failover(self, prompt: Sequence[int], call: Callable[[Backend], Awaitable[T]]) -> T:
        """Run ``call`` on a chosen server; on a connection error, take that server out and try another."""
        tried: set[Backend] = set()
        last: BaseException | None = None
        for attempt in range(self.options.retries + 1):
            backend = await self._choose(prompt, tried)
            if backend is None:
                break
            if attempt:
                self.failovers += 1
                log.warning("engine %s: retrying on %s after: %s", self.name, backend.shown, last)
            try:
                return await call(backend)
            except _ServerGone as exc:
                self._mark_down(exc.backend, exc)
                tried.add(exc.backend)
                last = exc
        raise EngineUnavailable(f"no server of model {self.name!r} could serve the request: {last or self._states()}")

    # ---- requests --------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _calling(self, backend: Backend) -> AsyncIterator[None]:
        """One call on ``backend``: counted as outstanding while it runs; a connection error becomes
        :class:`_ServerGone` (fail over), a timeout an :class:`EngineUpstreamError` (report)."""
        backend.outstanding += 1
        backend.requests += 1
        try:
            yield
        except _CONNECTION_ERRORS as exc:
            raise _ServerGone(backend, exc) from exc
        except httpx.TimeoutException as exc:
            raise EngineUpstreamError(f"{backend.shown} did not answer within {self.options.timeout_s:.0f} s") from exc
        finally:
            backend.outstanding -= 1

    async def _post(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming ``/v1/completions`` call."""
        async with self._calling(backend):
            response = await self._http().post(backend.url + "/v1/completions", json=body, headers=inject())
        raise_for_status(response)
        return response.json()

    async def _fan_out(self, backend: Backend, bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """All bodies concurrently on one server, each abortable by its ``request_id`` (``None``: aborted)."""
        tasks: list[asyncio.Task] = []
        try:
            async with asyncio.TaskGroup() as tg:
                for body in bodies:
                    task = tg.create_task(self._post(backend, body))
                    self._track(body["request_id"], task)
                    tasks.append(task)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            for body, task in zip(bodies, tasks):
                self._untrack(body["request_id"], task)
        # A task cancelled by abort() (not by our caller) leaves the group running; its answer is "aborted".
        return [None if t.cancelled() else t.result() for t in tasks]

    def _track(self, request_id: str, task: asyncio.Task) -> None:
        self._inflight.setdefault(request_id, set()).add(task)

    def _untrack(self, request_id: str, task: asyncio.Task) -> None:
        tasks = self._inflight.get(request_id)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._inflight[request_id]

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingConfig, request_id: str
    ) -> list[Generation]:
        bodies = [
            completion_body(self.served_model, p, seeded_apart(params, i), f"{request_id}-{i}")
            for i, p in enumerate(prompts)
        ]
        outs = await self._with_failover(prompts[0] if prompts else [], lambda b: self._fan_out(b, bodies))
        return [to_generation(out, prompt, params) for out, prompt in zip(outs, prompts)]

    async def continuation_logprobs(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], request_id: str
    ) -> list[list[float]]:
        return await continuation_logprobs(self, prompts, continuations, request_id)

    async def stream(
        self, prompt: Sequence[int], params: SamplingConfig, request_id: str
    ) -> AsyncIterator[StreamDelta]:
        rid = f"{request_id}-0"
        aborted = self._aborts.setdefault(rid, asyncio.Event())
        sent: dict[int, list[int]] = {}
        finished: set[int] = set()
        tried: set[Backend] = set()
        # First the whole request; if its server goes away, every unfinished answer resumes on another server.
        pending: list[tuple[int, list[int], SamplingConfig]] = [(0, list(prompt), params)]
        try:
            for attempt in range(self.options.retries + 1):
                try:
                    while pending:
                        offset, resumed_prompt, resumed = pending[0]
                        backend = await self._choose(resumed_prompt, tried)
                        if backend is None:
                            raise EngineUnavailable(f"no server of model {self.name!r} is healthy: {self._states()}")
                        async for delta in self._stream_once(backend, resumed_prompt, resumed, rid, offset, aborted):
                            sent.setdefault(delta.index, []).extend(delta.token_ids)
                            if delta.finish_reason is not None:
                                finished.add(delta.index)
                            yield delta
                        pending.pop(0)
                    for index in range(params.n):  # only after abort(): answers that never got to finish
                        if index not in finished:
                            yield StreamDelta(index=index, text="", token_ids=[], finish_reason="abort")
                    return
                except _ServerGone as exc:
                    self._mark_down(exc.backend, exc)
                    tried.add(exc.backend)
                    if attempt == self.options.retries:
                        raise EngineUnavailable(
                            f"no server of model {self.name!r} could finish the stream: {exc}"
                        ) from None
                    self.failovers += 1
                    log.warning("engine %s: resuming stream %s elsewhere after: %s", self.name, rid, exc)
                    pending = []
                    for index, tokens, resumed in self._resumptions(params, sent, finished):
                        if resumed.max_tokens > 0:
                            pending.append((index, list(prompt) + tokens, resumed))
                        else:  # its last token arrived, its finish_reason did not
                            finished.add(index)
                            yield StreamDelta(index=index, text="", token_ids=[], finish_reason="length")
        finally:
            self._aborts.pop(rid, None)

    @staticmethod
    def _resumptions(
        params: SamplingConfig, sent: dict[int, list[int]], finished: set[int]
    ) -> list[tuple[int, list[int], SamplingConfig]]:
        """For each unfinished answer: its tokens so far, and the one-answer request that continues it."""
        todo = []
        for index in range(params.n):
            if index in finished:
                continue
            tokens = sent.get(index, [])
            resumed = params.but(
                n=1,
                max_tokens=params.max_tokens - len(tokens),
                min_tokens=max(0, params.min_tokens - len(tokens)),
                seed=None if params.seed is None else params.seed + index,
            )
            todo.append((index, tokens, resumed))
        return todo

    async def _stream_once(
        self,
        backend: Backend,
        prompt: Sequence[int],
        params: SamplingConfig,
        request_id: str,
        index_offset: int,
        aborted: asyncio.Event,
    ) -> AsyncIterator[StreamDelta]:
        """One streaming ``/v1/completions`` call; answer ``i`` of it is reported as ``index_offset + i``.

        The server's usage (asked for with ``include_usage``) comes in a chunk of its own right after the last
        answer ends: that last delta is held for it and carries its ``num_cached_tokens``."""
        body = completion_body(self.served_model, prompt, params, request_id, stream=True)
        body["stream_options"] = {"include_usage": True}
        ended, last = 0, None
        async with (
            self._calling(backend),
            self._http().stream("POST", backend.url + "/v1/completions", json=body, headers=inject()) as response,
        ):
            if response.status_code >= 400:
                await response.aread()
                raise_for_status(response)
            async for line in response.aiter_lines():
                if aborted.is_set():  # leaving the block closes the connection, and vLLM aborts the request
                    return
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    if last is not None:
                        yield last
                    return
                chunk = json.loads(data)
                cached = cached_tokens(chunk.get("usage"))
                if last is not None:
                    yield last if cached is None else replace(last, num_cached_tokens=cached)
                    last = None
                for delta in stream_deltas(chunk, params, index_offset):
                    ended += delta.finish_reason is not None
                    if ended == params.n and delta.finish_reason is not None:
                        last = delta
                    else:
                        yield delta
            raise httpx.RemoteProtocolError("the stream ended without [DONE]")

    async def abort(self, request_ids: Sequence[str]) -> None:
        """Stop the calls running under these ids; closing their connections makes vLLM abort them."""
        for rid in request_ids:
            for task in list(self._inflight.get(rid, ())):
                task.cancel()
            if rid in self._aborts:
                self._aborts[rid].set()
