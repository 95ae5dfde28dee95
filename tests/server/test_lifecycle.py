"""Deadlines, failing rewards and graceful shutdown, on servers of their own."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from conftest import tiny_config
from serverproc import start_server, stop_server, wait_idle


@pytest.fixture(scope="module")
def strict_server(tiny_llama, tiny_classifier, tmp_path_factory):
    # 16 candidates of 480 tokens take ~1.2 s on the tiny model here; everything else in this module < 0.2 s.
    config = tiny_config(tiny_llama, tiny_classifier, request_timeout_s=0.6, max_candidates=16)
    config["rewards"]["rm_slow"] = {"type": "classifier", "path": str(tiny_classifier), "timeout_s": 1e-6}
    config["rewards"]["rm_drop"] = {
        "type": "classifier",
        "path": str(tiny_classifier),
        "timeout_s": 1e-6,
        "on_error": "drop",
    }
    server = start_server(config, tmp_path_factory.mktemp("strict"))
    yield server
    stop_server(server)


def test_deadline_is_504_not_length_and_work_is_aborted(strict_server):
    with strict_server.client() as http:
        r = http.post(
            "/v1/align",
            json={
                "prompt": "Hi",
                "max_tokens": 480,
                "ignore_eos": True,
                "reward": "length",
                "decoder": {"name": "best_of_n", "num_candidates": 16},
            },
        )
        assert r.status_code == 504
        assert r.json()["error"]["type"] == "timeout_error"
    assert wait_idle(strict_server) == (0.0, 0.0)


def test_a_deadline_passed_mid_stream_ends_it_with_an_error_event_and_aborts_the_work(strict_server):
    # A light DeAL search (two proposals, one lookahead token) commits its first token in tens of milliseconds,
    # well inside the 0.6 s deadline, then needs seconds for its 200 steps.
    body = {
        "prompt": "Hello",
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
        "reward": "length",
        "decoder": {"name": "deal", "top_k": 2, "lookahead": 1},
    }
    with strict_server.client() as http:
        # The engine's first log-prob calls warm up for ~2.5 s, past the deadline: retry a short search until the
        # engine answers it in time.
        for _ in range(20):
            if http.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2}).status_code == 200:
                break
            time.sleep(0.5)
        with http.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            events = [line for line in resp.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert "choices" in payloads[0]  # the stream had started
    error = payloads[-1]["error"]
    assert error["type"] == "timeout_error" and error["code"] == "deadline_exceeded"
    assert all(p.get("choices", [{}])[0].get("finish_reason") != "length" for p in payloads if p.get("choices"))
    assert wait_idle(strict_server) == (0.0, 0.0)


def test_reward_timeout_is_a_clean_error_and_drop_policy_explains(strict_server):
    body = {"prompt": "Hi", "max_tokens": 4, "decoder": {"name": "best_of_n", "num_candidates": 2}}
    with strict_server.client() as http:
        r = http.post("/v1/align", json={**body, "reward": "rm_slow"})
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["code"] == "reward_failed" and "timed out" in err["message"]
        assert "Traceback" not in r.text
        r = http.post("/v1/align", json={**body, "reward": "rm_drop"})
        assert r.status_code == 500 and "every candidate was dropped" in r.json()["error"]["message"]
        assert http.get("/health").status_code == 200


def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_zero(tiny_llama, tiny_classifier, tmp_path):
    config = tiny_config(tiny_llama, tiny_classifier)
    config["shutdown_grace_s"] = 30
    server = start_server(config, tmp_path)
    # /health answered 503 while the engine loaded, then 200 (and /v1/models is not what told us)
    assert 503 in server.health_seen and server.health_seen[-1] == 200
    result: dict = {}

    def long_stream():
        with (
            server.client() as http,
            http.stream(
                "POST",
                "/v1/completions",
                # a search that streams for seconds (plain sampling of 450 tokens is over in a fraction of one)
                json={
                    "model": "tiny",
                    "prompt": "Hello",
                    "max_tokens": 60,
                    "ignore_eos": True,
                    "stream": True,
                    "reward": "length",
                    "decoder": {"name": "deal", "top_k": 8, "lookahead": 16},
                },
            ) as resp,
        ):
            result["status"] = resp.status_code
            result["lines"] = [line for line in resp.iter_lines() if line]

    worker = threading.Thread(target=long_stream)
    worker.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    with server.client() as http:
        refused = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        health = http.get("/health")
    worker.join(60)
    assert refused.status_code == 503 and health.status_code == 503
    assert result["status"] == 200 and result["lines"][-1] == "data: [DONE]"
    assert server.proc.wait(60) == 0
    assert "draining: 1 requests in flight" in server.log_text()


def test_a_model_that_cannot_start_stops_the_server_with_exit_code_1(tiny_llama, tmp_path):
    """A supervisor (docker, systemd, Kubernetes) must see a failed start, not a server stuck answering 503."""
    from serverproc import free_port

    config = {
        "models": {
            "tiny": {
                "engine": "remote",
                "path": str(tiny_llama),
                "engine_args": {"urls": [f"http://127.0.0.1:{free_port()}"], "startup_timeout_s": 1},
            }
        },
        "rewards": {},
    }
    with pytest.raises(RuntimeError, match="exited with 1") as exc:
        start_server(config, tmp_path, timeout=120)
    assert "start-up failed" in str(exc.value) and "no server of model 'tiny' became healthy" in str(exc.value)
