"""Where a remote model's engine calls go: a router in front of the servers, or a short list of servers.

The engine layer's contract (:class:`~alignd.engines.protocol.Engine`) is that every call of one session (one
request: all its steps, rounds, lookaheads, rollouts, reference samples and its rewards' judge calls) is served by
one replica, so the replica's prefix cache serves what the session prefilled before. A :class:`Fleet` keeps it in
the two shapes a remote model can have:

* **behind a router** (``router: URL``): every call goes to the router with the session in a header
  (``x-session-id`` by default), which ``vllm-router``'s ``consistent_hash`` and ``sticky_least_loaded``
  policies, llm-d's session scorer and Ray Serve's consistent-hash router hash on; the router picks and keeps the
  replica, checks health and fails over. A call that loses its replica is sent again through the same URL.
* **a list of servers** (``urls``), the zero-dependency mode for a handful of servers: each session is pinned to the
  healthy server with the fewest outstanding requests when its first call arrives (ties taken in turn), and stays
  there; a server that drops a connection is taken out of rotation and its sessions move to another. Calls without
  a session (a script that set none) go to the least-loaded server each.

When a server is one vLLM data-parallel server (``data_parallel_size``), each call also says which rank serves the
session (``X-data-parallel-rank``, a stable hash of the session), as vLLM's own server honours it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import Field, SecretStr, model_validator

from ..secrets import shown_url
from .registry import EngineOptions
from .remote_wire import base_url

log = logging.getLogger(__name__)

MAX_PINNED_SESSIONS = 65536
"""Sessions whose server a list-mode fleet remembers (the oldest forgotten first; a session outlives no request)."""


class RemoteOptions(EngineOptions):
    """How alignd reaches the vLLM OpenAI-compatible servers of one model: through a router, or a list of servers."""

    router: str | None = None
    """One URL in front of every server: ``vllm-router`` (policy ``consistent_hash`` or ``sticky_least_loaded``),
    llm-d, KServe or Ray Serve. Each call carries the request's session in ``session_header``, so the router keeps a
    request's calls on one replica; the router balances requests, checks health and fails over."""
    urls: list[str] = Field(default_factory=list)
    """Without a router: the servers' base URLs, e.g. ``http://gpu1:8000`` (a trailing ``/v1`` is accepted). Each
    request is pinned to the least-loaded healthy server at its first call; for more than a handful of servers,
    put a router in front instead."""
    session_header: str = Field("x-session-id", min_length=1, max_length=64)
    """The header that carries the request's session to the router."""
    data_parallel_size: int = Field(1, ge=1, le=1024)
    """The ranks of each server when it is one vLLM data-parallel server (``--data-parallel-size``): every call of a
    request then names the same rank in ``X-data-parallel-rank``."""
    served_model_name: str | None = None
    """The model name the servers answer to (their ``--served-model-name``); default: the first they list."""
    api_key: SecretStr | None = None
    """Bearer key the servers (or the router) expect (their ``--api-key``)."""
    timeout_s: float = Field(600.0, gt=0)
    """Longest one engine call may take; past it the call fails (it is not retried)."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """Longest a connection attempt may take before the server counts as unreachable."""
    retries: int = Field(2, ge=0)
    """Connection errors survived per call: another server of the list, or the router again after a short wait
    (only connection errors are retried)."""
    health_interval_s: float = Field(5.0, gt=0)
    """Seconds between health probes of each server; a server back to 200 rejoins the rotation."""
    health_path: str | None = Field(None, pattern=r"^/[\w/.-]*$", max_length=200)
    """What the probes ask for; default: ``/health`` of each server, or ``/readiness`` of a router (vllm-router's
    200 while any worker can serve; its ``/health`` is 503 while any worker is down). Other routers: KServe
    ``/v2/health/ready``, Ray Serve ``/-/healthz``."""
    startup_timeout_s: float = Field(900.0, gt=0)
    """How long start-up waits for the first server to become healthy (vLLM may still be loading weights)."""
    max_connections: int = Field(256, ge=1)
    """Pooled HTTP connections per alignd process, over all servers."""
    max_logprobs: int = Field(20, ge=0)
    prefix_grammar: bool = False
    """The servers load alignd's grammar processor (``--logits-processors alignd.engines.grammar:PrefixGrammar``,
    alignd installed beside vLLM): decoders that extend a committed prefix then keep to a structured-output
    shape. Off, they refuse ``response_format`` with a 400."""
    json_whitespace: bool = True
    """The servers' JSON grammars allow whitespace (vLLM's default; off when they run with
    ``--structured-outputs-config.disable_any_whitespace``): alignd's continued grammars do the same."""
    """The servers' ``--max-logprobs`` (vLLM's default is 20)."""

    @model_validator(mode="after")
    def _one_shape(self) -> RemoteOptions:
        if (self.router is None) == (not self.urls):
            raise ValueError("give either router (one URL in front of the servers) or urls (the servers), not both")
        return self


@dataclass(eq=False, slots=True)
class Backend:
    """One server (or the router) and what the fleet knows about it."""

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


def rank_of(session: str, size: int) -> int:
    """The data-parallel rank a session's calls go to: a stable hash, the same in every alignd replica.

    >>> rank_of("chatcmpl-1", 4) == rank_of("chatcmpl-1", 4), rank_of("chatcmpl-1", 1)
    (True, 0)
    """
    digest = hashlib.blake2b(session.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % size


class Fleet:
    """The servers of one remote model, their health, and which one serves each session."""

    def __init__(self, name: str, options: RemoteOptions, client: Callable[[], httpx.AsyncClient]):
        self.name = name
        self.options = options
        self.router = options.router is not None
        self.backends = [Backend(base_url(u)) for u in ([options.router] if options.router else options.urls)]
        self.failovers = 0
        """Calls moved after a connection error (streams resumed included)."""
        self._client = client
        self._pins: OrderedDict[str, Backend] = OrderedDict()
        self._turn = 0

    # ---- health ----------------------------------------------------------------------------------------------

    def states(self) -> str:
        return "; ".join(f"{b.shown}: {'ok' if b.healthy else b.last_error}" for b in self.backends)

    async def probe(self, backend: Backend) -> bool:
        path = self.options.health_path or ("/readiness" if self.router else "/health")
        try:
            response = await self._client().get(backend.url + path, timeout=min(5.0, self.options.timeout_s))
            ok, why = response.status_code == 200, f"{path} answered {response.status_code}"
        except httpx.HTTPError as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
        if ok != backend.healthy:
            state = "up" if ok else f"down ({why})"
            log.log(logging.INFO if ok else logging.WARNING, "server %s %s", backend.shown, state)
        backend.healthy = ok
        backend.last_error = "" if ok else why
        return ok

    async def probe_all(self) -> bool:
        """Probe every server now; True if at least one is healthy."""
        return any(await asyncio.gather(*(self.probe(b) for b in self.backends)))

    async def health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            await self.probe_all()

    # ---- where a call goes -----------------------------------------------------------------------------------

    def pick(self, session: str | None, avoid: set[Backend]) -> Backend | None:
        """The backend for a call of ``session``: the router; else the server the session is pinned to, or (first
        call, or its server gone) the healthy server with the fewest outstanding requests, pinned from now on."""
        if self.router:
            router = self.backends[0]
            return router if router.healthy else None
        pinned = self._pins.get(session) if session is not None else None
        if pinned is not None and pinned.healthy and pinned not in avoid:
            self._pins.move_to_end(session)  # type: ignore[arg-type]
            return pinned
        candidates = [b for b in self.backends if b.healthy and b not in avoid]
        if not candidates:
            return None
        # Ties rotate: sessions that start together (before any of their calls is outstanding) spread.
        self._turn = (self._turn + 1) % len(self.backends)
        order = {b: (i - self._turn) % len(self.backends) for i, b in enumerate(self.backends)}
        chosen = min(candidates, key=lambda b: (b.outstanding, order[b]))
        if session is not None:
            if pinned is not None:
                log.info("engine %s: session %s moves from %s to %s", self.name, session, pinned.shown, chosen.shown)
            self._pins[session] = chosen
            self._pins.move_to_end(session)
            while len(self._pins) > MAX_PINNED_SESSIONS:
                self._pins.popitem(last=False)
        return chosen

    async def choose(self, session: str | None, avoid: set[Backend]) -> Backend | None:
        """:meth:`pick`, re-probing the fleet first when every server is marked down (one may be back)."""
        backend = self.pick(session, avoid)
        if backend is None and await self.probe_all():
            backend = self.pick(session, avoid)
        return backend

    def headers(self, session: str | None) -> dict[str, str]:
        """What a call of ``session`` tells the server or router about where it belongs."""
        headers = {}
        if session is not None:
            if self.router:
                headers[self.options.session_header] = session
            if self.options.data_parallel_size > 1:
                headers["X-data-parallel-rank"] = str(rank_of(session, self.options.data_parallel_size))
        return headers

    async def lost(self, backend: Backend, error: BaseException, attempt: int) -> set[Backend]:
        """A connection to ``backend`` broke; returns what the call's next try must avoid.

        The router stays: the replica behind it was lost, and the router, once its health check notices, sends the
        call elsewhere, so the call waits a little and goes through it again. A listed server is probed at once:
        one that still answers its health check only closed a stale connection (a keep-alive connection the server
        timed out as the call reused it), and the call is tried there again; one that does not leaves the rotation
        (its sessions move on their next call) and the call goes elsewhere."""
        backend.failures += 1
        self.failovers += 1
        if self.router:
            await asyncio.sleep(min(2.0, 0.25 * 2**attempt))
            return set()
        if await self.probe(backend):
            return set()
        if backend.healthy:
            log.warning("server %s taken out of rotation: %s", backend.shown, error)
        backend.healthy = False
        backend.last_error = str(error)
        return {backend}

    # ---- metrics ---------------------------------------------------------------------------------------------

    @staticmethod
    def metric_families(fleets: Iterable[Fleet]) -> tuple[Any, ...]:
        """Per-server state of every fleet: up, outstanding requests, requests sent, connection errors, failovers,
        and the sessions a list-mode fleet has pinned."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["model", "url"]
        up = GaugeMetricFamily("alignd_remote_server_up", "1 if the remote server is in rotation.", labels=labels)
        outstanding = GaugeMetricFamily(
            "alignd_remote_server_outstanding", "Engine requests waiting on the remote server now.", labels=labels
        )
        sent = CounterMetricFamily(
            "alignd_remote_server_requests", "Engine requests sent to the remote server.", labels=labels
        )
        errors = CounterMetricFamily(
            "alignd_remote_server_connection_errors", "Connection errors seen on the remote server.", labels=labels
        )
        failovers = CounterMetricFamily(
            "alignd_remote_failovers",
            "Engine calls sent again after a connection error (to another server, or through the router).",
            labels=["model"],
        )
        pinned = GaugeMetricFamily(
            "alignd_remote_pinned_sessions", "Requests a list of servers remembers the server of.", labels=["model"]
        )
        for fleet in fleets:
            for b in fleet.backends:
                values = [fleet.name, b.shown]
                up.add_metric(values, 1.0 if b.healthy else 0.0)
                outstanding.add_metric(values, b.outstanding)
                sent.add_metric(values, b.requests)
                errors.add_metric(values, b.failures)
            failovers.add_metric([fleet.name], fleet.failovers)
            pinned.add_metric([fleet.name], len(fleet._pins))
        return (up, outstanding, sent, errors, failovers, pinned)
