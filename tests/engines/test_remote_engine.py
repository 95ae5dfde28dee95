"""The remote engine against real vLLM OpenAI servers on loopback (the tiny Llama, CPU settings as in process).

Shown here: the same tokens, log-probs and continuation scores as the in-process engine; every decoder (greedy
or seeded) giving the same answers on both; a dead server in the list taken out of rotation; load spread over
two servers; a server killed mid-run losing no request, streams included; and server errors and timeouts
reported once, never retried.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from alignd.decoders import DecodeContext, DecodeRequest, decoder_registry
from alignd.engines.grammar import PROCESSOR
from alignd.engines.protocol import Constraint, EngineRequestError, EngineUnavailable, SamplingConfig
from alignd.engines.remote import RemoteEngine, RemoteOptions
from alignd.rewards import RewardSet, RewardTerm, build_reward

from serverproc import free_port, launch_vllm_server, stop_server, wait_healthy

pytestmark = pytest.mark.slow

PROMPTS = ["The quick brown fox", "Paris is the capital of", "Please write a short poem about the sea"]


@pytest.fixture(scope="module")
def vllm_server(tiny_llama, tmp_path_factory):
    """One vLLM OpenAI server on the tiny Llama, reporting cached prompt tokens, with alignd's grammar processor."""
    log = tmp_path_factory.mktemp("vllm-a") / "server.log"
    args = ("--enable-prompt-tokens-details", "--logits-processors", PROCESSOR)
    [server] = wait_healthy([launch_vllm_server(tiny_llama, log, *args)])
    yield server
    stop_server(server)


@pytest.fixture
async def remote(vllm_server, tiny_llama):
    """A remote engine over the live server and a port where nothing listens."""
    dead = f"http://127.0.0.1:{free_port()}"
    engine = RemoteEngine("tiny", str(tiny_llama), RemoteOptions(urls=[vllm_server.url, dead], health_interval_s=60))
    await engine.start()
    yield engine
    await engine.shutdown()


def _encode(engine, texts=PROMPTS) -> list[list[int]]:
    return [engine.tokenizer.encode(t) for t in texts]


async def test_same_tokens_logprobs_and_continuation_scores_as_in_process(remote, vllm_engine):
    assert remote.info.max_model_len == vllm_engine.info.max_model_len == 512
    assert remote.info.vocab_size == vllm_engine.info.vocab_size
    assert [b.healthy for b in remote.backends] == [True, False]  # the dead port is out of rotation
    await remote.check_health()

    prompts = _encode(remote)
    assert prompts == _encode(vllm_engine)
    greedy = SamplingConfig(max_tokens=12, temperature=0.0, logprobs=3)
    local = await vllm_engine.generate(prompts, greedy, "local-1")
    served = await remote.generate(prompts, greedy, "remote-1")
    for a, b in zip(local, served, strict=True):
        [ca], [cb] = a.completions, b.completions
        assert cb.token_ids == ca.token_ids and cb.text == ca.text and cb.finish_reason == ca.finish_reason
        assert cb.logprobs == pytest.approx(ca.logprobs, abs=1e-4)
        assert [set(row) for row in cb.top_logprobs] == [set(row) for row in ca.top_logprobs]
        assert b.prompt_token_ids == a.prompt_token_ids

    # A judge's verdict tokens: exactly these ids at every position.
    verdict = SamplingConfig(max_tokens=1, temperature=0.0, logprob_token_ids=(5, 9))
    [a], [b] = await vllm_engine.generate(prompts[:1], verdict, "l2"), await remote.generate(prompts[:1], verdict, "r2")
    want_row, got_row = a.completions[0].top_logprobs[0], b.completions[0].top_logprobs[0]
    assert got_row.keys() >= {5, 9}
    assert [got_row[5], got_row[9]] == pytest.approx([want_row[5], want_row[9]], abs=1e-4)

    # Continuation log-probs (prompt_logprobs), and streaming gives the same tokens as generate.
    continuations = [c.completions[0].token_ids[:5] for c in local]
    want = await vllm_engine.continuation_logprobs(prompts, continuations, "l3")
    got = await remote.continuation_logprobs(prompts, continuations, "r3")
    for w, g in zip(want, got, strict=True):
        assert g == pytest.approx(w, abs=1e-4)
    streamed = [d async for d in remote.stream(prompts[0], greedy, "r4")]
    assert sum((d.token_ids for d in streamed), []) == local[0].completions[0].token_ids
    assert "".join(d.text for d in streamed) == local[0].completions[0].text
    assert streamed[-1].finish_reason == "length"

    # The second time round the prompt comes from the server's prefix cache, and usage says so.
    [again] = await remote.generate([prompts[2] * 3], greedy.but(max_tokens=1), "r5")
    [again] = await remote.generate([prompts[2] * 3], greedy.but(max_tokens=1), "r6")
    assert again.num_cached_tokens >= 32
    # ... and in a stream, on its last delta (the server's usage follows the last answer's end)
    streamed = [
        d
        async for d in remote.stream(
            prompts[2] * 3, greedy.but(max_tokens=3, n=2, temperature=1, ignore_eos=True), "r7"
        )
    ]
    assert [d for d in streamed if d.num_cached_tokens is not None] == [streamed[-1]]
    assert streamed[-1].num_cached_tokens >= 32 and streamed[-1].finish_reason == "length"
    assert sum(d.finish_reason is not None for d in streamed) == 2


async def test_bad_requests_get_the_engine_errors_decoders_expect(remote):
    prompt = _encode(remote)[0]
    with pytest.raises(EngineRequestError) as exc:
        await remote.generate([prompt], SamplingConfig(max_tokens=600), "too-long")
    assert exc.value.param == "max_tokens"
    with pytest.raises(EngineRequestError):  # refused by vLLM itself (over --max-logprobs), not by us
        await remote.generate([prompt], SamplingConfig(max_tokens=2, logprobs=50), "too-many-logprobs")
    await remote.check_health()


async def test_constraints_reach_the_server_and_hold_as_in_process(remote, vllm_engine):
    prompt = _encode(remote)[0]
    pick = SamplingConfig(n=4, max_tokens=8, seed=2, constraint=Constraint.of("choice", ["red", "green"]))
    for engine in (remote, vllm_engine):
        [gen] = await engine.generate([prompt], pick, f"choice-{engine.name}")
        assert {c.text for c in gen.completions} <= {"red", "green"}
    three = SamplingConfig(max_tokens=10, constraint=Constraint.of("regex", "[0-9]{3}"))
    [remote_gen], [local_gen] = [await e.generate([prompt], three, f"regex-{id(e)}") for e in (remote, vllm_engine)]
    assert remote_gen.completions[0].text.isdigit() and len(remote_gen.completions[0].text) == 3
    assert len(local_gen.completions[0].text) == 3


VERDICT = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
}


async def test_a_grammar_continued_from_a_committed_prefix_on_the_server(vllm_server, vllm_engine, tiny_llama):
    """DeAL under a JSON schema: every lookahead continues the grammar over the committed tokens, on a server
    with alignd's processor as in process; a fleet without it refuses before any work."""
    sampling = {"max_tokens": 40, "constraint": Constraint.of("json", VERDICT)}
    options = RemoteOptions(urls=[vllm_server.url], prefix_grammar=True, json_whitespace=False)
    engine = RemoteEngine("tiny", str(tiny_llama), options)
    await engine.start()
    try:
        assert engine.info.prefix_grammar and vllm_engine.info.prefix_grammar
        reward = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
        deal = {"top_k": 3, "lookahead": 3}
        runs = [await _decode(e, "deal", dict(deal), reward, PROMPTS[1], **sampling) for e in (vllm_engine, engine)]
        local, served = runs
        assert json.loads(local.choices[0].text).keys() == {"answer", "sure"}
        assert [c.token_ids for c in served.choices] == [c.token_ids for c in local.choices]
    finally:
        await engine.shutdown()
    plain = RemoteEngine("tiny", str(tiny_llama), RemoteOptions(urls=[vllm_server.url]))
    await plain.start()
    try:
        shaped = SamplingConfig(max_tokens=4, constraint=Constraint.of("json", VERDICT), constraint_start=0)
        with pytest.raises(EngineRequestError, match="--logits-processors"):
            await plain.generate([_encode(plain)[0]], shaped, "no-processor")
    finally:
        await plain.shutdown()


async def _decode(engine, decoder: str, params: dict, reward: RewardSet | None, prompt: str, options=None, **sampling):
    cls = decoder_registry()[decoder]
    request = DecodeRequest(
        "decode", engine.tokenizer.encode(prompt), prompt, SamplingConfig(**sampling), n=params.pop("n", 1)
    )
    instance = cls(cls.Params.model_validate(params), cls.Options.model_validate(options or {}))
    return await instance.decode(request, DecodeContext(engine, reward))


@pytest.mark.parametrize(
    ("decoder", "params", "sampling"),
    [
        ("sample", {}, {"max_tokens": 16, "temperature": 0.0}),
        ("best_of_n", {"num_candidates": 4}, {"max_tokens": 16, "temperature": 1.0, "seed": 7}),
        ("deal", {"top_k": 3, "lookahead": 3}, {"max_tokens": 8}),
        ("ctrl", {"num_candidates": 3, "reference_samples": 6}, {"max_tokens": 8, "temperature": 1.0, "seed": 5}),
        ("diverse_beam", {"beam_width": 4, "groups": 2}, {"max_tokens": 6}),
        ("transfer_q", {"top_k": 3, "rollout_tokens": 4}, {"max_tokens": 6, "seed": 3}),  # seeded rollouts
        ("args", {"top_k": 3}, {"max_tokens": 6}),
        ("urial", {}, {"max_tokens": 8}),
        (  # the first tokens drawn from the served top log-probs, then seeded blocks
            "blockwise_best_of_n",
            {"num_candidates": 3, "block": 3, "first_block": 1, "first_token": "one_step"},
            {"max_tokens": 7, "temperature": 1.0, "seed": 4},
        ),
    ],
)
async def test_decoders_answer_the_same_remote_and_in_process(remote, vllm_engine, decoder, params, sampling, tmp_path):
    from alignd.decoders.ctrl import REFERENCE_CACHE

    reward = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
    options = None
    if decoder == "urial":  # the shipped prompt does not fit the tiny model's 512 tokens
        (tmp_path / "urial.md").write_text("# Query:\n```\nHi\n```\n\n# Answer:\n```\nHello world!\n```\n")
        options = {"prompt_file": str(tmp_path / "urial.md")}
    for prompt in PROMPTS[:2]:
        runs = []
        for engine in (vllm_engine, remote):
            REFERENCE_CACHE.clear()  # ctrl: each engine draws its own references
            runs.append(await _decode(engine, decoder, dict(params), reward, prompt, options, **sampling))
        local, served = runs
        assert [c.token_ids for c in served.choices] == [c.token_ids for c in local.choices]
        assert [c.text for c in served.choices] == [c.text for c in local.choices]
        assert served.usage.engine_calls == local.usage.engine_calls


async def test_two_servers_share_the_load_and_a_killed_one_loses_no_request(vllm_server, tiny_llama, tmp_path):
    [second] = wait_healthy([launch_vllm_server(tiny_llama, tmp_path / "b.log")])
    engine = RemoteEngine(
        "tiny", str(tiny_llama), RemoteOptions(urls=[vllm_server.url, second.url], health_interval_s=0.5)
    )
    try:
        await engine.start()
        prompts = _encode(engine, [f"{p} number {i}" for i in range(4) for p in PROMPTS])  # 12 prompts
        greedy = SamplingConfig(max_tokens=300, temperature=0.0, ignore_eos=True)
        reference = [g.completions[0].token_ids for g in await engine.generate(prompts, greedy.but(), "ref")]
        long_prompt = prompts[0]
        stream_reference = reference[0]

        async def streamed(i: int) -> list[int]:
            return sum([d.token_ids async for d in engine.stream(long_prompt, greedy, f"s{i}")], [])

        # Two streams first (one per server: the second sees the first outstanding), then single-prompt calls.
        streams = [asyncio.create_task(streamed(0))]
        await asyncio.sleep(0.05)
        streams.append(asyncio.create_task(streamed(1)))
        await asyncio.sleep(0.05)
        calls = [asyncio.create_task(engine.generate([p], greedy, f"g{i}")) for i, p in enumerate(prompts)]
        a, b = engine.backends
        for _ in range(200):
            if a.outstanding and b.outstanding:
                break
            await asyncio.sleep(0.02)
        assert a.outstanding and b.outstanding, "the balancer left a server idle"
        # Kill at once, while b has work in flight: a 300-token answer of the tiny model can finish within a fixed
        # pause on an idle machine, and then nothing fails over.
        second.proc.send_signal(signal.SIGKILL)

        answers = await asyncio.gather(*calls)
        assert [g.completions[0].token_ids for [g] in answers] == reference
        assert await asyncio.gather(*streams) == [stream_reference, stream_reference]
        assert a.requests > 0 and b.requests > 0
        assert not b.healthy and b.failures >= 1 and engine.fleet.failovers >= 1
        await engine.check_health()  # one server left is enough
    finally:
        await engine.shutdown()
        stop_server(second)


async def test_an_all_dead_fleet_is_unavailable_not_hung(tiny_llama):
    dead = RemoteOptions(urls=[f"http://127.0.0.1:{free_port()}"], startup_timeout_s=1, health_interval_s=0.2)
    engine = RemoteEngine("tiny", str(tiny_llama), dead)
    with pytest.raises(EngineUnavailable, match="no server"):
        await engine.start()
    with pytest.raises(EngineUnavailable):
        await engine.check_health()


def test_alignd_serves_a_remote_model_through_the_openai_client(vllm_server, tiny_llama, tmp_path):
    """``engine: remote`` in the YAML: chat with best_of_n and the model judging itself, all over HTTP."""
    import openai

    from serverproc import API_KEY, metric, start_server

    config = {
        "models": {"tiny": {"engine": "remote", "path": str(tiny_llama), "engine_args": {"urls": [vllm_server.url]}}},
        "rewards": {"judge": {"type": "judge"}},
        "api_keys": [API_KEY],
    }
    server = start_server(config, tmp_path)
    try:
        client = openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)
        out = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hello world"}],
            max_tokens=8,
            seed=3,
            extra_body={"decoder": {"name": "best_of_n", "num_candidates": 3}, "reward": "judge"},
        )
        alignment = out.model_extra["alignment"]
        assert alignment["decoder"] == "best_of_n" and alignment["usage"]["candidates_scored"] == 3
        assert out.choices[0].message.content
        assert metric(server, "alignd_remote_server_up", required=True, url=vllm_server.url) == 1.0
        # one sampling request for the 3 candidates, then the judge's 3 verdict prompts: all on the fleet
        assert metric(server, "alignd_remote_server_requests_total", required=True) == 4

        # A client that goes away mid-request (streaming, then not): alignd closes its connections to the vLLM
        # server, which aborts both requests instead of finishing their 450 + 8 x 450 tokens.
        def generated() -> float:
            return metric(vllm_server, "vllm:generation_tokens_total", required=True)

        before = generated()
        long = {"model": "tiny", "prompt": "Hello", "max_tokens": 450, "ignore_eos": True}
        with server.client() as http:
            with http.stream("POST", "/v1/completions", json={**long, "stream": True}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        break
            with pytest.raises(httpx.TimeoutException):  # 8 x 450 tokens take far longer than 50 ms
                http.post("/v1/completions", json={**long, "n": 8}, timeout=0.05)
        deadline = time.time() + 1.0
        while metric(vllm_server, "vllm:num_requests_running", required=True) and time.time() < deadline:
            time.sleep(0.05)
        assert metric(vllm_server, "vllm:num_requests_running", required=True) == 0
        assert generated() - before < 0.8 * 9 * 450
        assert metric(server, "alignd_remote_server_outstanding", required=True) == 0
    finally:
        assert stop_server(server) == 0


@pytest.fixture
def failing_upstream():
    """A real HTTP server that is healthy but fails (500) or stalls (3 s) every completion: not a vLLM, since a
    vLLM cannot be made to fail on purpose. Counts the completion calls it receives."""
    import threading
    import time

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    calls = {"n": 0, "mode": "500"}

    @app.get("/health")
    def health():
        return {}

    @app.get("/v1/models")
    def models():
        return {"data": [{"id": "tiny", "max_model_len": 512}]}

    @app.post("/v1/completions")
    async def completions():
        calls["n"] += 1
        if calls["mode"] == "stall":
            await asyncio.sleep(3)
        return JSONResponse({"error": {"message": "CUDA error: an illegal memory access", "type": "x"}}, 500)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", calls
    server.should_exit = True
    thread.join(10)


async def test_server_errors_and_timeouts_are_reported_not_retried(failing_upstream, tiny_llama):
    from alignd.engines.protocol import EngineUpstreamError

    url, calls = failing_upstream
    engine = RemoteEngine("tiny", str(tiny_llama), RemoteOptions(urls=[url, url + "/v1"], timeout_s=0.5))
    await engine.start()
    try:
        prompt = engine.tokenizer.encode("Hello")
        with pytest.raises(EngineUpstreamError, match="illegal memory access"):
            await engine.generate([prompt], SamplingConfig(max_tokens=4), "e1")
        calls["mode"] = "stall"
        with pytest.raises(EngineUpstreamError, match="did not answer within"):
            await engine.generate([prompt], SamplingConfig(max_tokens=4), "e2")
        assert calls["n"] == 2 and engine.fleet.failovers == 0  # one try each, although a second server was listed
        await engine.check_health()  # a failed request does not take a server out of rotation

        # A judge on a failing engine: the engine's error (502), not a reward failure to drop candidates over.
        from alignd.rewards import RewardContext

        context = RewardContext(engines={"tiny": engine}, default_model="tiny")
        judge = build_reward("judge", {"type": "judge", "on_error": "drop", "timeout_s": 10}, context)
        with pytest.raises(EngineUpstreamError):
            await RewardSet([RewardTerm(judge)]).score("Hello", ["Hi there"])
    finally:
        await engine.shutdown()
