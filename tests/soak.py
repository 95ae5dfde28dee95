"""A bounded soak of a running alignd server on loopback: every decoder, streaming and not, some requests cancelled
by their client, some bad, from a few client threads at once, for a fixed time. It samples the resident memory of
the server's whole process group (the API process, vLLM's engine core and its worker) as it goes, and counts
every request it sent by route and by the status the server must have recorded, so the caller can hold
``/metrics`` to the client's own counts. Used by ``tests/server/test_soak.py`` (one minute) and
``bench/bench_soak.py`` (ten minutes, numbers in the README).
"""

from __future__ import annotations

import collections
import itertools
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serverproc import ServerProcess, group_members


def group_rss_mib(pgid: int) -> float:
    """Resident memory of every process in the group, in MiB."""
    total = 0
    for pid, _ in group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@dataclass
class Request:
    """One kind of request of the mix: where it goes, its body, and how the client treats it."""

    name: str
    route: str  # the metrics label: completions, chat, align
    path: str
    body: dict
    expect: int = 200
    stream: bool = False
    cancel: bool = False
    """Leave after the first streamed event (the server must record 499 and abort the work)."""
    label: str | None = None
    """The decoder label the server records; default: the body's decoder (none for a body that fails validation)."""

    @property
    def decoder_label(self) -> str:
        if self.label is not None:
            return self.label
        decoder = self.body.get("decoder", "sample")
        return decoder if isinstance(decoder, str) else decoder["name"]


def mix(model: str, reward: str) -> list[Request]:
    """Every decoder, streaming and not, a cancelled stream, and bad requests; all small, so a loop cycles fast."""
    chat = [{"role": "user", "content": "Say something kind."}]
    search = {"prompt": "Hello", "max_tokens": 6, "reward": reward}
    return [
        Request("sample", "completions", "/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": 8}),
        Request(
            "sample-stream",
            "chat",
            "/v1/chat/completions",
            {"model": model, "messages": chat, "max_tokens": 8, "stream": True},
            stream=True,
        ),
        Request(
            "best_of_n",
            "align",
            "/v1/align",
            {"prompt": "Hi", "max_tokens": 8, "reward": reward, "decoder": {"name": "best_of_n", "num_candidates": 4}},
        ),
        Request(
            "ctrl",
            "align",
            "/v1/align",
            {"prompt": "Hi", "max_tokens": 6, "reward": reward, "decoder": {"name": "ctrl", "reference_samples": 8}},
        ),
        Request(
            "deal-stream",
            "completions",
            "/v1/completions",
            {"model": model, **search, "stream": True, "decoder": {"name": "deal", "top_k": 3, "lookahead": 3}},
            stream=True,
        ),
        Request(
            "transfer_q",
            "align",
            "/v1/align",
            {**search, "decoder": {"name": "transfer_q", "top_k": 3, "rollout_tokens": 3}},
        ),
        Request("args", "align", "/v1/align", {**search, "decoder": {"name": "args", "top_k": 3}}),
        Request(
            "diverse_beam",
            "chat",
            "/v1/chat/completions",
            {
                "model": model,
                "messages": chat,
                "max_tokens": 6,
                "n": 2,
                "decoder": {"name": "diverse_beam", "beam_width": 2, "groups": 2},
            },
        ),
        Request(
            "urial",
            "chat",
            "/v1/chat/completions",
            {"model": model, "messages": chat, "max_tokens": 8, "decoder": "urial"},
        ),
        Request(
            "cancelled-stream",
            "completions",
            "/v1/completions",
            {
                "model": model,
                "prompt": "Hello",
                # A minute or more of search: the server must see the client leave long before the end, even when
                # the soak's own process, starved of CPU, reads the first event seconds after it was sent (a
                # search of ~10 s once ended first in a few of a hundred cancels, and was rightly counted 200).
                "max_tokens": 300,
                "ignore_eos": True,
                "stream": True,
                "reward": reward,
                "decoder": {"name": "deal", "top_k": 8, "lookahead": 64},
            },
            expect=499,
            stream=True,
            cancel=True,
        ),
        Request(
            "bad-400",
            "completions",
            "/v1/completions",
            {"model": model, "prompt": "x", "temperature": -1},
            expect=400,
            label="",  # refused by validation, before any decoder is known
        ),
        Request(
            "bad-404",
            "align",
            "/v1/align",
            {"prompt": "x", "decoder": "no_such_decoder"},
            expect=404,
        ),
    ]


@dataclass
class SoakResult:
    seconds: float
    requests: int
    counts: collections.Counter = field(default_factory=collections.Counter)
    """(route, decoder label, status) -> requests the server must have recorded."""
    unexpected: list[str] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start, MiB) samples of the server's process group."""
    latency: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))

    def rss_after(self, warmup_s: float) -> list[float]:
        return [mib for t, mib in self.rss if t >= warmup_s]

    def growth_after(self, warmup_s: float) -> float:
        """MiB the process group grew after the warm-up: the median of the last three samples less the median of
        the first three. A leak moves both ends; a transient peak (a burst of requests) moves one sample."""
        steady = self.rss_after(warmup_s)
        return statistics.median(steady[-3:]) - statistics.median(steady[:3])


def soak(
    server: ServerProcess,
    requests: list[Request],
    seconds: float,
    threads: int = 4,
    sample_every_s: float = 2.0,
    client: Callable[[], httpx.Client] | None = None,
) -> SoakResult:
    """Run the mix from ``threads`` clients for ``seconds`` (each finishes its request in flight), sampling RSS."""
    result = SoakResult(seconds=seconds, requests=0)
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + seconds
    make = client or server.client

    def worker(offset: int) -> None:
        with make() as http:
            for i in itertools.count(offset):
                if time.monotonic() >= stop:
                    return
                req = requests[i % len(requests)]
                t0 = time.monotonic()
                status = _send(http, req)
                with lock:
                    result.requests += 1
                    result.latency[req.name].append(time.monotonic() - t0)
                    result.counts[(req.route, req.decoder_label, status)] += 1
                    if status != req.expect:
                        result.unexpected.append(f"{req.name}: {status}")

    def sampler() -> None:
        while time.monotonic() < stop:
            result.rss.append((time.monotonic() - start, group_rss_mib(server.proc.pid)))
            time.sleep(sample_every_s)

    pool = [threading.Thread(target=worker, args=(k * 3,)) for k in range(threads)]
    pool.append(threading.Thread(target=sampler))
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    result.rss.append((time.monotonic() - start, group_rss_mib(server.proc.pid)))
    return result


def _send(http: httpx.Client, req: Request) -> int:
    if not req.stream:
        return http.post(req.path, json=req.body).status_code
    with http.stream("POST", req.path, json=req.body) as resp:
        if resp.status_code != 200:
            resp.read()
            return resp.status_code
        for line in resp.iter_lines():
            if req.cancel and line.startswith("data: {"):
                return 499  # the client leaves; the server records 499
            if line.startswith("data: {") and "error" in json.loads(line[6:]):
                return 500
    return 200


def server_counts(server: ServerProcess) -> collections.Counter:
    """``alignd_requests_total`` by (route, decoder, status) from ``/metrics``."""
    out: collections.Counter = collections.Counter()
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("alignd_requests_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
            key = tuple(labels[k].strip('"') for k in ("route", "decoder", "status"))
            out[(key[0], key[1], int(key[2]))] += int(float(line.rsplit(" ", 1)[1]))
    return out
