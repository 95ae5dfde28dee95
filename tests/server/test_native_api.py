"""The native API (/v1/align), discovery routes, reward scoring, health and metrics on the real server."""

from __future__ import annotations

import concurrent.futures
import json

import httpx

from serverproc import wait_idle


def test_align_returns_choice_candidates_usage_and_timings(server):
    with server.client() as http:
        r = http.post(
            "/v1/align",
            json={
                "prompt": "The quick brown fox",
                "max_tokens": 8,
                "seed": 4,
                "decoder": {"name": "best_of_n", "num_candidates": 5},
                "reward": "length",
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "alignment" and body["decoder"] == "best_of_n" and body["reward"] == ["length"]
    candidates = body["candidates"]
    assert len(candidates) == 5
    best = max(c["reward"] for c in candidates)
    assert body["choices"][0]["reward"] == best
    assert body["choices"][0]["text"] == candidates[body["choices"][0]["candidate_index"]]["text"]
    usage = body["usage"]
    assert usage["engine_calls"] == 1 and usage["candidates_scored"] == 5
    assert usage["engine_completion_tokens"] == sum(c["num_tokens"] for c in candidates)
    assert usage["completion_tokens"] == candidates[body["choices"][0]["candidate_index"]]["num_tokens"]
    timings = body["timings"]
    assert timings["total"] >= timings["engine"] > 0 and "reward" in timings and "orchestration" in timings


def test_align_chat_with_a_classifier_reward(server):
    with server.client() as http:
        r = http.post(
            "/v1/align",
            json={
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 6,
                "seed": 1,
                "decoder": {"name": "best_of_n", "num_candidates": 3},
                "reward": "rm",
            },
        )
    assert r.status_code == 200, r.text
    rewards = [c["reward"] for c in r.json()["candidates"]]
    assert all(isinstance(x, float) for x in rewards)
    assert r.json()["choices"][0]["reward"] == max(rewards)


def test_align_several_prompts_share_one_budget(server):
    """Texts and conversations in one request: best-of-N's pilot round on each, the rest of the samples where
    rewards spread, each prompt's share in its ``info``; streamed, each prompt's answer under its own index."""
    body = {
        "prompts": ["The quick brown fox", [{"role": "user", "content": "Hello"}], "Once upon a time"],
        "max_tokens": 10,
        "seed": 3,
        "n": 1,
        "decoder": {"name": "best_of_n", "num_candidates": 4, "allocate": True, "pilot": 2},
        "reward": "length",
    }
    with server.client() as http:
        r = http.post("/v1/align", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert [c["index"] for c in out["choices"]] == [0, 1, 2] and len(out["candidates"]) == 3
        infos = out["info"]
        assert [i["pilot"] for i in infos] == [2, 2, 2] and sum(i["allocated"] for i in infos) >= 1
        for info, candidates, choice in zip(infos, out["candidates"], out["choices"]):
            assert info["samples"] == len(candidates) == 2 + info["allocated"]
            assert choice["reward"] == max(c["reward"] for c in candidates)
        capped = http.post("/v1/align", json={**body, "budget": {"max_engine_tokens": 120}}).json()
        assert capped["usage"]["engine_new_tokens"] <= 120 + 10
        with http.stream("POST", "/v1/align", json={**body, "stream": True}) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    chunks = [e for e in events if e.get("object") == "alignment.chunk"]
    texts = {i: "".join(c["text"] for c in chunks if c["index"] == i) for i in range(3)}
    assert [texts[i] for i in range(3)] == [c["text"] for c in out["choices"]]
    assert events[-1]["object"] == "alignment" and len(events[-1]["info"]) == 3
    r = server.client().post("/v1/align", json={"prompts": ["x", []]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompts"


def test_align_refuses_unknown_fields_and_needs_one_prompt(server):
    with server.client() as http:
        r = http.post("/v1/align", json={"prompt": "x", "decodr": "sample"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "decodr"
        r = http.post("/v1/align", json={"prompt": "x", "messages": [{"role": "user", "content": "y"}]})
        assert r.status_code == 400


def test_decoders_list_their_parameter_schemas(server):
    with server.client() as http:
        data = {d["name"]: d for d in http.get("/v1/decoders").json()["data"]}
    assert {"sample", "best_of_n"} <= set(data)
    schema = data["best_of_n"]["params_schema"]
    assert schema["properties"]["num_candidates"]["minimum"] == 1
    assert schema["additionalProperties"] is False
    assert data["best_of_n"]["requires_reward"] is True
    # each decoder says what it supports, as it declares it
    assert data["deal"]["supports"] == {
        "budget": True,
        "streaming": "tokens",
        "n": True,
        "structured_output": True,
        "continues_prefix": True,
    }
    assert data["self_consistency"]["supports"]["n"] is False and data["urial"]["supports"]["budget"] is False
    assert data["best_of_n"]["supports"]["streaming"] == "answer"
    for name in ("step_beam", "particle_filter", "speculative_rejection", "blockwise_best_of_n"):
        assert data[name]["supports"]["budget"] is True, name


def test_rewards_list_and_score_endpoint(server):
    with server.client() as http:
        listed = http.get("/v1/rewards").json()
        assert {"judge", "length", "keywords", "rm", "flaky", "readability"} == {r["name"] for r in listed["data"]}
        assert {"judge", "classifier", "length", "keywords", "regex", "sum"} <= set(listed["kinds"])
        r = http.post("/v1/rewards/length/score", json={"prompt": "q", "completions": ["ab", "abcd"]})
        assert r.json()["scores"] == [2.0, 4.0]
        r = http.post("/v1/rewards/judge/score", json={"prompt": "What is 2+2?", "completions": ["4", "purple"]})
        assert r.status_code == 200 and len(r.json()["scores"]) == 2
        r = http.post("/v1/rewards/nope/score", json={"completions": ["x"]})
        assert r.status_code == 404


def test_metrics_count_requests_by_decoder_and_status(server):
    with server.client() as http:
        http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
        text = httpx.get(server.url + "/metrics").text
    assert 'alignd_requests_total{decoder="sample",route="completions",status="200"}' in text
    assert "alignd_request_latency_seconds_bucket" in text
    assert "alignd_engine_tokens_total" in text
    assert "vllm:" in text  # the engine's own metrics are exported beside ours


def test_over_the_concurrency_limit_is_429_before_any_stream(server):
    # Streams that last seconds each (a DeAL search), so twelve of them overlap the limit of six.
    body = {
        "model": "tiny",
        "prompt": "Hello",
        "max_tokens": 120,
        "ignore_eos": True,
        "stream": True,
        "reward": "length",
        "decoder": {"name": "deal", "top_k": 8, "lookahead": 16},
    }

    def one(_):
        with server.client() as http, http.stream("POST", "/v1/completions", json=body) as resp:
            lines = [line for line in resp.iter_lines() if line]
            return resp.status_code, lines

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    codes = sorted(code for code, _ in results)
    assert codes.count(429) >= 1 and codes.count(200) >= 1
    for code, lines in results:
        if code == 429:
            assert json.loads("".join(lines))["error"]["type"] == "rate_limit_error"
        else:
            assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)


def test_disconnect_aborts_engine_work(server):
    with server.client() as http:
        with http.stream(
            "POST",
            "/v1/completions",
            json={
                "model": "tiny",
                "prompt": "Hello",
                "max_tokens": 450,
                "ignore_eos": True,
                "stream": True,
            },
        ) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    break  # leave after the first token
        # non-streaming: the client times out and goes away mid-request
        try:
            http.post(
                "/v1/align",
                json={
                    "prompt": "Hello",
                    "max_tokens": 450,
                    "ignore_eos": True,
                    "decoder": {"name": "best_of_n", "num_candidates": 8},
                    "reward": "length",
                },
                timeout=0.5,
            )
        except httpx.TimeoutException:
            pass
    assert wait_idle(server) == (0.0, 0.0)


def test_oversized_body_is_413_and_prompts_are_logged_truncated(server):
    with server.client() as http:
        r = http.post("/v1/completions", content=b"x" * (5 << 20), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
        secret_tail = "TAIL-THAT-MUST-NOT-BE-LOGGED"
        http.post("/v1/completions", json={"model": "tiny", "prompt": "A" * 100 + secret_tail, "max_tokens": 1})
    log = server.log_text()
    assert "AAAA" in log and secret_tail not in log
    assert "test-key-123" not in log


def test_ctrl_and_diverse_beam_over_http(server):
    with server.client() as http:
        r = http.post(
            "/v1/align",
            json={
                "prompt": "Hello there",
                "max_tokens": 6,
                "seed": 3,
                "reward": "rm",
                "decoder": {"name": "ctrl", "num_candidates": 4, "reference_samples": 8},
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert all(0.0 <= c["calibrated_reward"] <= 1.0 for c in body["candidates"])
        assert body["choices"][0]["calibrated_reward"] == max(c["calibrated_reward"] for c in body["candidates"])
        again = http.post(
            "/v1/align",
            json={
                "prompt": "Hello there",
                "max_tokens": 6,
                "seed": 3,
                "reward": "rm",
                "decoder": {"name": "ctrl", "num_candidates": 4, "reference_samples": 8},
            },
        ).json()
        assert again["usage"]["engine_calls"] == 1  # the references came from the cache
        metrics = httpx.get(server.url + "/metrics").text
        assert "alignd_ctrl_reference_cache_hits_total" in metrics
        r = http.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 5,
                "n": 4,
                "return_candidates": True,
                "decoder": {"name": "diverse_beam", "beam_width": 4, "groups": 2, "diversity_penalty": 1.0},
            },
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 4
        r = http.post(
            "/v1/align", json={"prompt": "x", "decoder": {"name": "diverse_beam", "beam_width": 3, "groups": 2}}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "decoder"
        assert "divisible" in r.json()["error"]["message"]


def test_search_decoders_over_http_stream_committed_tokens(server):
    with server.client() as http:
        for decoder in (
            {"name": "deal", "top_k": 4, "lookahead": 4, "weight": 2.0},
            {"name": "transfer_q", "top_k": 4, "rollout_tokens": 4},
            {"name": "args", "top_k": 4, "weight": 1.0},
        ):
            r = http.post("/v1/align", json={"prompt": "Hello", "max_tokens": 6, "reward": "rm", "decoder": decoder})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["engine_calls"] <= r.json()["info"]["steps"] + 1
            with http.stream(
                "POST",
                "/v1/completions",
                json={
                    "model": "tiny",
                    "prompt": "Hello",
                    "max_tokens": 6,
                    "reward": "rm",
                    "decoder": decoder,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "return_candidates": True,
                },
            ) as resp:
                events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
            texts = [e["choices"][0]["text"] for e in events if e["choices"]]
            assert len(texts) >= 2  # committed tokens arrive step by step, not in one piece
            # (compared with this stream's own final answer: separate runs of a random tiny model can flip
            # near-ties between batches, so the /v1/align answer above need not match token for token)
            alignment = events[-1]["alignment"]
            chosen = alignment["candidates"][alignment["choices"][0]["candidate_index"]]
            assert "".join(texts) == chosen["text"]
        assert 'alignd_engine_calls_per_step_count{decoder="deal"}' in httpx.get(server.url + "/metrics").text


def test_disconnect_stops_a_search_decoder(server):
    with server.client() as http:
        with http.stream(
            "POST",
            "/v1/completions",
            json={
                "model": "tiny",
                "prompt": "Hello",
                "max_tokens": 400,
                "ignore_eos": True,
                "stream": True,
                "reward": "length",
                "decoder": {"name": "deal", "top_k": 8, "lookahead": 16},
            },
        ) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    break
    assert wait_idle(server) == (0.0, 0.0)
