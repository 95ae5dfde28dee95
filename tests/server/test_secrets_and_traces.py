"""Secrets never leave the server, and its traces say what a request did (reliability items 20 and 25).

One real server holds a secret in every place a configuration can hold one: its own API key, an in-process
engine's argument, a remote engine's key (a real vLLM server that demands it), a remote scorer's key, a URL's
password, a ``python`` reward's keyword argument and a plug-in reward's typed parameter. It exports traces over
OTLP/HTTP to a receiver on loopback that decodes the wire format with ``opentelemetry-proto``. Every admin answer,
error message, span and line of the log is searched for every secret; the secrets must still have worked.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import tiny_config
from serverproc import API_KEY, launch_vllm_server, start_server, stop_server, wait_healthy

SECRETS = {
    name: f"{name}-{secrets.token_hex(8)}" for name in ("fleet", "scorer", "url", "kwargs", "plugin", "prm", "hf")
}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class _Receiver(BaseHTTPRequestHandler):
    """A loopback HTTP endpoint that records what it is sent: an OTLP collector, or a remote scorer."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.received.append((self.path, headers, body))  # type: ignore[attr-defined]
        if self.path == "/v1/traces":
            self._answer(200, b"", "application/x-protobuf")
        elif self.headers.get("authorization") != f"Bearer {SECRETS['scorer']}":
            self._answer(401, b'{"error": "unauthorized"}')
        else:
            texts = json.loads(body)["completions"]
            self._answer(200, json.dumps({"scores": [float(len(t)) for t in texts]}).encode())

    def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the suite's output clean
        pass


def _listen() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def fleet(tiny_llama, tmp_path_factory):
    """A vLLM server that demands an API key."""
    log = tmp_path_factory.mktemp("fleet") / "vllm.log"
    [server] = wait_healthy([launch_vllm_server(tiny_llama, log, "--api-key", SECRETS["fleet"])])
    yield server
    stop_server(server)


def test_secrets_stay_out_of_logs_answers_errors_and_traces(tiny_llama, tiny_classifier, fleet, plugin_path, tmp_path):  # noqa: E501
    collector, scorer = _listen(), _listen()
    config = tiny_config(tiny_llama, tiny_classifier)
    config["models"]["tiny"]["engine_args"]["hf_token"] = SECRETS["hf"]
    config["models"]["fleet"] = {
        "engine": "remote",
        "path": str(tiny_llama),
        "engine_args": {"urls": [fleet.url], "api_key": SECRETS["fleet"], "health_interval_s": 60},
    }
    config["rewards"].update(
        {
            "scorer": {
                "type": "remote",
                "url": f"http://127.0.0.1:{scorer.server_port}/score",
                "api_key": SECRETS["scorer"],
            },
            "fn": {
                "type": "python",
                "function": "alignd_test_plugins:lengths",
                "kwargs": {"api_key": SECRETS["kwargs"]},
            },
            "guarded": {"type": "guarded", "token": SECRETS["plugin"]},
            "steps": {
                "type": "prm",
                "backend": "remote",
                "path": str(tiny_llama),
                "url": f"http://ops:{SECRETS['url']}@127.0.0.1:9/",
                "api_key": SECRETS["prm"],
            },
        }
    )
    config["otlp_traces_endpoint"] = f"http://127.0.0.1:{collector.server_port}/v1/traces"
    env = {"PYTHONPATH": plugin_path, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = start_server(config, tmp_path, env=env)
    answers: list[str] = []
    try:
        with server.client() as http:
            for path in (
                "/v1/models",
                "/v1/decoders",
                "/v1/rewards",
                "/version",
                "/health",
                "/metrics",
                "/openapi.json",
            ):
                r = http.get(path)
                assert r.status_code == 200, (path, r.text)
                answers.append(r.text)
            traceparent = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
            aligned = http.post(
                "/v1/chat/completions",
                headers={"traceparent": traceparent},
                json={
                    "messages": [{"role": "user", "content": "Say something."}],
                    "max_tokens": 6,
                    "seed": 1,
                    "decoder": {"name": "best_of_n", "num_candidates": 2},
                    "reward": [{"name": "scorer"}, {"name": "fn"}, {"name": "guarded"}],
                },
            )
            assert aligned.status_code == 200, aligned.text
            answers.append(aligned.text)
            remote = http.post("/v1/completions", json={"model": "fleet", "prompt": "Hi", "max_tokens": 4})
            assert remote.status_code == 200, remote.text  # the fleet's key was sent, and accepted
            answers.append(remote.text)
            scorer.shutdown()
            scorer.server_close()
            for attempt in (
                http.post("/v1/rewards/scorer/score", json={"prompt": "Hi", "completions": ["a"]}),
                http.post(
                    "/v1/align", json={"prompt": "Hi", "max_tokens": 3, "reward": "scorer", "decoder": "best_of_n"}
                ),
            ):
                assert attempt.status_code == 502, attempt.text  # the scorer is gone: an upstream error
                answers.append(attempt.text)
            for bad in (
                http.post("/v1/align", json={"prompt": "Hi", "reward": "nope"}),
                httpx.get(server.url + "/v1/rewards", headers={"Authorization": f"Bearer {SECRETS['scorer']}"}),
            ):
                assert bad.status_code in (401, 404)
                answers.append(bad.text)
        time.sleep(1.0)  # the batch span processor exports every 100 ms here
    finally:
        assert stop_server(server) == 0
        collector.shutdown()
    log = server.log_text()
    assert "configuration:" in log and "**********" in log  # the configuration was logged, masked
    traces = [ExportTraceServiceRequest.FromString(body) for path, _, body in collector.received]
    spans = [s for t in traces for rs in t.resource_spans for ss in rs.scope_spans for s in ss.spans]
    everything = "\n".join([log, *answers, *(str(t) for t in traces)])
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret leaked"
    assert API_KEY not in everything

    # The secrets did their work: the scorer was called with its key, and the trace went on to it.
    [(path, headers, _)] = [r for r in scorer.received if r[0] == "/score"][:1]
    assert headers["authorization"] == f"Bearer {SECRETS['scorer']}"
    assert headers["traceparent"].split("-")[1] == CLIENT_TRACE

    # The trace: the request (a child of the client's span), its decode, the decoder's rounds, one span per
    # engine call with its token counts, one per reward call.
    ours = [s for s in spans if s.trace_id.hex() == CLIENT_TRACE]
    names = [s.name for s in ours]
    assert "POST /v1/chat/completions" in names and "decode" in names and "decoder.generate" in names
    usage = aligned.json()["alignment"]["usage"]
    engine = [s for s in ours if s.name.startswith("engine.")]
    assert len(engine) == usage["engine_calls"] == 1
    attributes = {a.key: a.value for a in engine[0].attributes}
    assert attributes["alignd.completion_tokens"].int_value == usage["engine_completion_tokens"]
    assert attributes["alignd.prompt_tokens"].int_value == usage["engine_prompt_tokens"]
    assert "alignd.cached_tokens" in attributes and attributes["alignd.source"].string_value == "decoder"
    assert len([s for s in ours if s.name == "reward.score"]) == 3  # one call per reward
    by_id = {s.span_id: s for s in ours}
    assert by_id[engine[0].parent_span_id].name == "decoder.generate"


def test_an_invalid_configuration_is_refused_without_its_values(tmp_path):
    # pydantic's own message quotes the input it refused; the secret beside the typo must not be printed
    bad = {"rewards": {"scorer": {"type": "remote", "url": "http://127.0.0.1:9/", "api_key": [SECRETS["scorer"]]}}}
    path = tmp_path / "alignd.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = subprocess.run(
        [sys.executable, "-m", "alignd.server.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 1
    assert "invalid configuration" in out.stderr and "reward 'scorer': api_key" in out.stderr
    assert SECRETS["scorer"] not in out.stdout + out.stderr
