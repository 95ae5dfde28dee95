"""One search, one replica, in every fleet shape (reliability item 24), with real parts on loopback: two vLLM
servers behind ``vllm-router``, vLLM's data parallelism in process, and one vLLM data-parallel server. Where each
engine call landed is read from the replicas' own counters (each server's ``/metrics``, each rank's ``engine``
label), never from alignd's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from alignd.engines.protocol import SamplingConfig
from alignd.engines.remote import RemoteEngine

from serverproc import (
    API_KEY,
    ServerProcess,
    launch_router,
    launch_vllm_server,
    metric,
    start_server,
    stop_server,
    wait_healthy,
)

DONE = "vllm:request_success_total"
"""Requests a vLLM engine finished: each server's own count, by rank (``engine``) for a data-parallel one."""
SEARCHES = {
    "deal": {"name": "deal", "top_k": 3, "lookahead": 4},
    "speculative_rejection": {"name": "speculative_rejection", "num_candidates": 4, "chunk": 4},
    "step_beam": {"name": "step_beam", "beam_width": 2, "expansions": 2, "max_step_tokens": 4, "max_steps": 3},
}


def _search(decoder: dict, prompt: str = "Tell me about the sea", **extra) -> dict:
    body = {"prompt": prompt, "max_tokens": 10, "seed": 3, "reward": "length", "decoder": decoder}
    return {**body, **extra}


def _rewards() -> dict:
    return {"length": {"type": "length", "unit": "chars"}}


@pytest.fixture(scope="module")
def replicas(tiny_llama, tmp_path_factory):
    logs = tmp_path_factory.mktemp("replicas")
    # each logs the ids of the requests it receives: the kill test finds the replica serving its stream by them
    launched = [launch_vllm_server(tiny_llama, logs / f"vllm-{i}.log", "--enable-log-requests") for i in range(2)]
    servers = wait_healthy(launched)
    yield servers
    for server in servers:
        stop_server(server)


@pytest.fixture(scope="module")
def router(replicas, tmp_path_factory):
    [server] = wait_healthy([launch_router(replicas, tmp_path_factory.mktemp("router") / "router.log")])
    yield server
    stop_server(server)


def _done(servers: list[ServerProcess]) -> list[float]:
    return [metric(s, DONE) for s in servers]


def _moved(before: list[float], after: list[float]) -> list[float]:
    return [a - b for a, b in zip(after, before)]


async def test_what_the_remote_engine_sends_passes_the_router_unchanged(tiny_llama, replicas, router):
    direct = RemoteEngine("tiny", str(tiny_llama), {"urls": [replicas[0].url]})
    routed = RemoteEngine("tiny", str(tiny_llama), {"router": router.url})
    await asyncio.gather(direct.start(), routed.start())
    try:
        prompt = direct.tokenizer.encode("The sea is", add_special_tokens=True)
        asks = [
            SamplingConfig(max_tokens=4, temperature=0.0, logprobs=3),  # token ids, top-k by token id
            SamplingConfig(max_tokens=1, temperature=0.0, logprob_token_ids=(5, 7, 11)),  # a judge's verdicts
            SamplingConfig(max_tokens=3, n=2, seed=4, temperature=1.0),  # seeded samples
        ]
        for params in asks:
            [a] = await direct.generate([prompt], params, "direct", session="s")
            [b] = await routed.generate([prompt], params, "routed", session="s")
            assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
            rows_a = [row for c in a.completions for row in c.top_logprobs or []]
            rows_b = [row for c in b.completions for row in c.top_logprobs or []]
            assert [sorted(r) for r in rows_a] == [sorted(r) for r in rows_b]  # the same token ids, by id
            assert [r[t] for r in rows_a for t in sorted(r)] == pytest.approx([r[t] for r in rows_b for t in sorted(r)])
        continuation = [prompt[-1], prompt[0]]
        a = await direct.continuation_logprobs([prompt], [continuation], "direct", session="s")  # prompt_logprobs
        b = await routed.continuation_logprobs([prompt], [continuation], "routed", session="s")
        assert a[0] == pytest.approx(b[0]) and all(v > -50 for v in a[0])
        streamed = [d.token_ids async for d in routed.stream(prompt, asks[0], "routed-stream", session="s")]
        [whole] = await direct.generate([prompt], asks[0], "direct-2")
        assert sum(streamed, []) == whole.completions[0].token_ids
    finally:
        await asyncio.gather(direct.shutdown(), routed.shutdown())


@pytest.fixture(scope="module")
def routed_alignd(tiny_llama, router, tmp_path_factory):
    config = {
        "models": {
            "tiny": {"engine": "remote", "path": str(tiny_llama), "engine_args": {"router": router.url, "retries": 6}}
        },
        "rewards": _rewards(),
        "limits": {"max_concurrent_requests": 16},
        "api_keys": [API_KEY],
    }
    server = start_server(config, tmp_path_factory.mktemp("routed-alignd"))
    yield server
    stop_server(server)


@pytest.mark.parametrize("decoder", sorted(SEARCHES))
def test_through_the_router_every_call_of_a_search_lands_on_one_server(decoder, replicas, routed_alignd):
    before = _done(replicas)
    with routed_alignd.client() as http:
        r = http.post("/v1/align", json=_search(SEARCHES[decoder]))
    assert r.status_code == 200, r.text
    moved = _moved(before, _done(replicas))
    calls = r.json()["usage"]["engine_requests"]  # prompts sent; vLLM counts each of n samples as one request
    assert calls > 2 and min(moved) == 0 and max(moved) >= calls, (decoder, moved, calls)


def test_through_the_router_concurrent_searches_use_both_servers(replicas, routed_alignd):
    before = _done(replicas)
    with routed_alignd.client() as http, ThreadPoolExecutor(8) as pool:
        prompts = [f"Tell me about the number {i}" for i in range(8)]
        answers = list(pool.map(lambda p: http.post("/v1/align", json=_search(SEARCHES["deal"], p)), prompts))
    assert all(a.status_code == 200 for a in answers)
    moved = _moved(before, _done(replicas))
    assert sum(moved) == sum(a.json()["usage"]["engine_requests"] for a in answers)  # deal: n=1 everywhere
    assert min(moved) > 0, moved  # sessions spread over the replicas


async def test_a_list_of_servers_pins_each_request_to_the_least_loaded_at_its_start(tiny_llama, replicas):
    # The zero-dependency mode: a request's calls all go to the server chosen at its first call.
    engine = RemoteEngine("pinned", str(tiny_llama), {"urls": [s.url for s in replicas]})
    await engine.start()
    try:
        prompt = engine.tokenizer.encode("Hello", add_special_tokens=True)
        long = SamplingConfig(max_tokens=400, ignore_eos=True, temperature=0.0)
        short = SamplingConfig(max_tokens=2, temperature=0.0)
        before = _done(replicas)
        first = asyncio.create_task(engine.generate([prompt], long, "a-0", session="a"))
        while not any(b.outstanding for b in engine.backends):
            await asyncio.sleep(0.002)
        for i in range(3):  # b starts while a's first call is out: b goes to the other server, and stays
            await engine.generate([prompt], short, f"b-{i}", session="b")
        await first
        for i in range(2):  # a comes back to its own server, though both are idle now
            await engine.generate([prompt], short, f"a-{i + 1}", session="a")
        assert sorted(_moved(before, _done(replicas))) == [3, 3]
        assert metric_pins(engine) == 2
    finally:
        await engine.shutdown()


def metric_pins(engine: RemoteEngine) -> float:
    [pinned] = [f for f in RemoteEngine.collect_metrics() if f.name == "alignd_remote_pinned_sessions"]
    return sum(s.value for s in pinned.samples if s.labels["model"] == engine.name)


def test_a_replica_killed_mid_stream_leaves_one_unbroken_answer(replicas, routed_alignd):
    # Greedy, so the answer resumed on the other replica is the one the killed replica would have given.
    body = {"prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True, "temperature": 0, "stream": True}
    with routed_alignd.client() as http:
        whole = http.post("/v1/completions", json={**body, "stream": False}).json()["choices"][0]["text"]
    for _ in range(5):
        # The tiny model writes 300 tokens in a fraction of a second, often before its first one reaches the
        # client: the replica serving the stream is frozen once the client has its first chunk, and killed only if
        # the stream is then still unfinished (else thawed, and the stream tried again).
        chunks: list[dict] = []
        first, ended = threading.Event(), threading.Event()
        reader = threading.Thread(target=_read_stream, args=(routed_alignd, body, chunks, first, ended))
        reader.start()
        assert first.wait(60), "no first chunk"
        replica = _serving(replicas, chunks[0]["id"].split("-")[-1])
        os.killpg(replica.proc.pid, signal.SIGSTOP)
        if ended.wait(1.0):
            os.killpg(replica.proc.pid, signal.SIGCONT)
            reader.join()
            continue
        os.killpg(replica.proc.pid, signal.SIGKILL)
        replica.proc.wait()
        reader.join(120)
        break
    else:
        pytest.fail("every stream finished before its replica could be stopped")
    assert all("error" not in c for c in chunks), chunks
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert metric(routed_alignd, "alignd_remote_failovers_total") >= 1


def _read_stream(server: ServerProcess, body: dict, chunks: list, first: threading.Event, ended: threading.Event):
    with server.client() as http, http.stream("POST", "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line.removeprefix("data: ")))
                first.set()
    ended.set()


def _serving(replicas: list[ServerProcess], request_hex: str, within_s: float = 10.0) -> ServerProcess:
    """The replica whose log shows a request of alignd's request ``request_hex``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = [s for s in replicas if request_hex in s.log_text()]
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no replica logged a request of {request_hex}")


def _dp_counts(server: ServerProcess) -> list[float]:
    return [metric(server, DONE, engine=str(rank)) for rank in range(2)]


def _one_rank_then_both(server: ServerProcess, counts) -> None:
    """A search's calls all on one rank; eight concurrent searches on both."""
    with server.client() as http:
        before = counts()
        r = http.post("/v1/align", json=_search(SEARCHES["deal"]))
        assert r.status_code == 200, r.text
        calls = r.json()["usage"]["engine_requests"]
        assert sorted(_moved(before, counts())) == [0, calls]  # deal sends n=1 calls only
        before = counts()
        with ThreadPoolExecutor(8) as pool:
            prompts = [f"Count to {i}" for i in range(8)]
            answers = list(pool.map(lambda p: http.post("/v1/align", json=_search(SEARCHES["deal"], p)), prompts))
        assert all(a.status_code == 200 for a in answers)
        assert min(_moved(before, counts())) > 0


def test_in_process_data_parallel_ranks_keep_a_search_on_one(tiny_llama, tmp_path):
    config = {
        "models": {
            "tiny": {
                "path": str(tiny_llama),
                "engine_args": {
                    "dtype": "float32",
                    "max_model_len": 512,
                    "kv_cache_memory_bytes": 64 << 20,
                    "data_parallel_size": 2,
                },
            }
        },
        "rewards": _rewards(),
        "api_keys": [API_KEY],
    }
    server = start_server(config, tmp_path, timeout=400)
    try:
        # vLLM's own counters, one series per rank, served on alignd's /metrics beside alignd's
        _one_rank_then_both(server, lambda: _dp_counts(server))
    finally:
        assert stop_server(server) == 0


def test_one_vllm_data_parallel_server_gets_each_search_on_one_rank(tiny_llama, tmp_path):
    [vllm] = wait_healthy([launch_vllm_server(tiny_llama, tmp_path / "vllm-dp.log", "--data-parallel-size", "2")])
    config = {
        "models": {
            "tiny": {
                "engine": "remote",
                "path": str(tiny_llama),
                "engine_args": {"urls": [vllm.url], "data_parallel_size": 2},
            }
        },
        "rewards": _rewards(),
        "api_keys": [API_KEY],
    }
    (tmp_path / "alignd").mkdir()
    server = start_server(config, tmp_path / "alignd")
    try:
        _one_rank_then_both(server, lambda: _dp_counts(vllm))
    finally:
        stop_server(server)
        stop_server(vllm)
