"""The engine adapter for remote vLLM servers, spoken to over their OpenAI-compatible API: through a router in
front of them, or a list of servers (:mod:`alignd.engines.remote_fleet` says where each call goes).

Every decoder works on it unchanged, because everything the engine protocol needs is in vLLM's
``/v1/completions``:

- prompts travel as token ids, and ``return_token_ids`` gives the sampled token ids back;
- top-k log-probs come from ``logprobs``, with ``return_tokens_as_token_ids`` so each alternative is named by
  its id (``token_id:N``) rather than by an ambiguous string, and a judge's verdict tokens from
  ``logprob_token_ids``;
- continuation log-probs come from ``prompt_logprobs=0`` with one generated token, as in process;
- a request is aborted by closing its connection (vLLM aborts a request whose client went away).

Tokenizing and chat templates stay local: the engine loads the model's tokenizer from a folder on disk, so
prompts are tokenized exactly as the in-process adapter would.

**Failures.** A connection error (refused, reset, closed mid-response) is survived up to ``retries`` times: the
call goes to another server of the list, or through the router again; nothing else is retried (a timeout or a
5xx would only double the load). A stream that loses its server after some tokens resumes from the prompt plus
the tokens already sent, so the client sees one uninterrupted answer; for greedy decoding it is the same answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

import httpx

from ..tracing import inject
from .protocol import (
    EngineInfo,
    EngineRequestError,
    EngineUnavailable,
    EngineUpstreamError,
    Generation,
    SamplingConfig,
    StreamDelta,
    continuation_logprobs,
    first_error,
    seeded_apart,
)
from .registry import EngineAdapter, register
from .remote_fleet import Backend, Fleet, RemoteOptions
from .remote_wire import cached_tokens, completion_body, raise_for_status, stream_deltas, to_generation
from .tokenizer import HFTokenizer

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "this server is gone or unreachable", as opposed to "this request failed": only these are
# retried. ReadError and RemoteProtocolError are what a server killed mid-response produces.
_CONNECTION_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError)


class _ServerGone(Exception):
    """A connection-level failure of one server."""

    def __init__(self, backend: Backend, cause: BaseException):
        super().__init__(f"{backend.shown}: {type(cause).__name__}: {cause}")
        self.backend = backend


class _ResumedText:
    """The text of an answer that resumed on another server, made here from its tokens.

    The server that resumes an answer detokenizes the continuation against a prompt that now ends in the answer's
    own tokens: where a token holds part of a character, or a tokenizer's leading space depends on what precedes
    it, that text can differ from what the first server would have sent (it can even repeat the prompt). The
    tokens are the answer; its text is decoded here, after the prompt's last tokens as a server's incremental
    detokenizer does, and a trailing part of a character is held back until the token that completes it."""

    def __init__(self, tokenizer: Any, prompt: Sequence[int], tokens: list[int], shown: str, params: SamplingConfig):
        self.tokenizer, self.skip = tokenizer, params.skip_special_tokens
        self.context = list(prompt[-4:])
        self.tokens = list(tokens)
        self.shown = shown
        self.lead = len(self._decode(self.context))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def feed(self, token_ids: Sequence[int], final: bool) -> str:
        """The text the new tokens add to what was shown."""
        self.tokens.extend(token_ids)
        text = self._decode(self.context + self.tokens)[self.lead :]
        if not final:
            text = text.rstrip("\ufffd")
        if len(text) <= len(self.shown):
            return ""
        new, self.shown = text[len(self.shown) :], text
        return new


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
        self.fleet = Fleet(name, self.options, self._http)
        self.info = EngineInfo(name=name, max_model_len=0, vocab_size=0, max_logprobs=0, path=tokenizer_path)
        self.tokenizer: HFTokenizer | None = None  # type: ignore[assignment]
        self.served_model = self.options.served_model_name or ""
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task | None = None
        self._inflight: dict[str, set[asyncio.Task]] = {}
        self._aborts: dict[str, asyncio.Event] = {}
        self._live.add(self)

    @property
    def backends(self) -> list[Backend]:
        return self.fleet.backends

    @classmethod
    def collect_metrics(cls) -> Iterable[Any]:
        """Per-server state of every remote engine's fleet (:meth:`Fleet.metric_families`)."""
        return Fleet.metric_families(engine.fleet for engine in list(cls._live))

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
        while not await self.fleet.probe_all():
            if time.monotonic() > deadline:
                await self.shutdown()
                raise EngineUnavailable(f"no server of model {self.name!r} became healthy: {self.fleet.states()}")
            await asyncio.sleep(min(2.0, opts.health_interval_s))
        card = await self._model_card()
        self.info = EngineInfo(
            name=self.name,
            max_model_len=int(card.get("max_model_len") or 0),
            vocab_size=vocab_size,
            max_logprobs=opts.max_logprobs,
            path=self.tokenizer_path,
            prefix_grammar=opts.prefix_grammar,
            json_whitespace=opts.json_whitespace,
            extra={
                "engine": "remote",
                "router" if self.fleet.router else "servers": [b.shown for b in self.backends],
                "served_model": self.served_model,
            },
        )
        self._health_task = asyncio.create_task(self.fleet.health_loop(), name=f"health-{self.name}")
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
            raise EngineUnavailable(f"no server of model {self.name!r} is healthy: {self.fleet.states()}")

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailable(f"model {self.name!r} is not serving")
        return self._client

    # ---- failover --------------------------------------------------------------------------------------------

    async def _with_failover(self, session: str | None, call: Callable[[Backend], Awaitable[T]]) -> T:
        """Run ``call`` where the fleet sends ``session``; after a connection error, on another server or through
        the router again."""
        tried: set[Backend] = set()
        last: BaseException | None = None
        for attempt in range(self.options.retries + 1):
            backend = await self.fleet.choose(session, tried)
            if backend is None:
                break
            if attempt:
                log.warning("engine %s: retrying on %s after: %s", self.name, backend.shown, last)
            try:
                return await call(backend)
            except _ServerGone as exc:
                tried |= await self.fleet.lost(exc.backend, exc, attempt)
                last = exc
        raise EngineUnavailable(
            f"no server of model {self.name!r} could serve the request: {last or self.fleet.states()}"
        )

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

    async def _post(self, backend: Backend, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        """One non-streaming ``/v1/completions`` call."""
        async with self._calling(backend):
            response = await self._http().post(backend.url + "/v1/completions", json=body, headers=inject(headers))
        self._raise_for_status(response, backend)
        return response.json()

    def _raise_for_status(self, response: httpx.Response, backend: Backend) -> None:
        """The server's error as the engine protocol's. Behind a router, a 5xx means the replica the router chose
        was lost or unreachable (the router answers for it): the call goes through the router again, which by
        then sends it to a healthy replica; a server of a list reports its own 5xx, which is not retried."""
        try:
            raise_for_status(response)
        except EngineUpstreamError as exc:
            if self.fleet.router:
                raise _ServerGone(backend, exc) from exc
            raise

    async def _fan_out(
        self, backend: Backend, bodies: Sequence[dict[str, Any]], session: str | None
    ) -> list[dict[str, Any] | None]:
        """All bodies concurrently on one server, each abortable by its ``request_id`` (``None``: aborted)."""
        tasks: list[asyncio.Task] = []
        headers = self.fleet.headers(session)
        try:
            async with asyncio.TaskGroup() as tg:
                for body in bodies:
                    task = tg.create_task(self._post(backend, body, headers))
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

    def _check_grammar(self, params: SamplingConfig) -> None:
        if params.constraint is not None and params.constraint_start is not None and not self.options.prefix_grammar:
            raise EngineRequestError(
                f"the servers of model {self.name!r} cannot continue a structured-output grammar from a committed "
                "prefix: start them with --logits-processors alignd.engines.grammar:PrefixGrammar and set the "
                "engine option prefix_grammar: true",
                "response_format",
            )

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingConfig, request_id: str, *, session: str | None = None
    ) -> list[Generation]:
        self._check_grammar(params)
        bodies = [
            completion_body(
                self.served_model,
                p,
                seeded_apart(params, i),
                f"{request_id}-{i}",
                json_whitespace=self.options.json_whitespace,
            )
            for i, p in enumerate(prompts)
        ]
        outs = await self._with_failover(session, lambda b: self._fan_out(b, bodies, session))
        return [to_generation(out, prompt, params) for out, prompt in zip(outs, prompts)]

    async def continuation_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        request_id: str,
        *,
        session: str | None = None,
    ) -> list[list[float]]:
        return await continuation_logprobs(self, prompts, continuations, request_id, session=session)

    async def stream(
        self, prompt: Sequence[int], params: SamplingConfig, request_id: str, *, session: str | None = None
    ) -> AsyncIterator[StreamDelta]:
        rid = f"{request_id}-0"
        aborted = self._aborts.setdefault(rid, asyncio.Event())
        sent: dict[int, list[int]] = {}
        shown: dict[int, str] = {}
        retexted: dict[int, _ResumedText] = {}
        finished: set[int] = set()
        tried: set[Backend] = set()
        # First the whole request; if its server goes away, every unfinished answer resumes on another server.
        pending: list[tuple[int, list[int], SamplingConfig]] = [(0, list(prompt), params)]
        try:
            for attempt in range(self.options.retries + 1):
                try:
                    while pending:
                        offset, resumed_prompt, resumed = pending[0]
                        backend = await self.fleet.choose(session, tried)
                        if backend is None:
                            raise EngineUnavailable(
                                f"no server of model {self.name!r} is healthy: {self.fleet.states()}"
                            )
                        stream = self._stream_once(backend, resumed_prompt, resumed, rid, offset, aborted, session)
                        async for delta in stream:
                            if delta.index in retexted:
                                text = retexted[delta.index].feed(delta.token_ids, delta.finish_reason is not None)
                                delta = replace(delta, text=text)
                            sent.setdefault(delta.index, []).extend(delta.token_ids)
                            shown[delta.index] = shown.get(delta.index, "") + delta.text
                            if delta.finish_reason is not None:
                                finished.add(delta.index)
                            yield delta
                        pending.pop(0)
                    for index in range(params.n):  # only after abort(): answers that never got to finish
                        if index not in finished:
                            yield StreamDelta(index=index, text="", token_ids=[], finish_reason="abort")
                    return
                except _ServerGone as exc:
                    tried |= await self.fleet.lost(exc.backend, exc, attempt)
                    if attempt == self.options.retries:
                        raise EngineUnavailable(
                            f"no server of model {self.name!r} could finish the stream: {exc}"
                        ) from None
                    log.warning("engine %s: resuming stream %s elsewhere after: %s", self.name, rid, exc)
                    pending = []
                    for index, tokens, resumed in self._resumptions(params, sent, finished):
                        if resumed.max_tokens > 0:
                            pending.append((index, list(prompt) + tokens, resumed))
                            retexted[index] = _ResumedText(self.tokenizer, prompt, tokens, shown.get(index, ""), params)
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
        session: str | None,
    ) -> AsyncIterator[StreamDelta]:
        """One streaming ``/v1/completions`` call; answer ``i`` of it is reported as ``index_offset + i``.

        The server's usage (asked for with ``include_usage``) comes in a chunk of its own right after the last
        answer ends: that last delta is held for it and carries its ``num_cached_tokens``."""
        self._check_grammar(params)
        body = completion_body(
            self.served_model, prompt, params, request_id, stream=True, json_whitespace=self.options.json_whitespace
        )
        body["stream_options"] = {"include_usage": True}
        ended, last = 0, None
        async with (
            self._calling(backend),
            self._http().stream(
                "POST", backend.url + "/v1/completions", json=body, headers=inject(self.fleet.headers(session))
            ) as response,
        ):
            if response.status_code >= 400:
                await response.aread()
                self._raise_for_status(response, backend)
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
