"""Shared fixtures: tiny local models, a real vLLM engine on the tiny Llama, and the scripted engine."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serverproc import STARTED_GROUPS, kill_group, leftover_processes  # noqa: E402
from tiny_models import build_tiny_classifier, build_tiny_llama  # noqa: E402

# The tests must never reach a hub: everything they load is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_ENGINE_ARGS = {"dtype": "float32", "max_model_len": 512, "kv_cache_memory_bytes": 64 << 20, "seed": 0}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_llama(tiny_dir) -> Path:
    return build_tiny_llama(tiny_dir / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_classifier(tiny_dir) -> Path:
    return build_tiny_classifier(tiny_dir / "tiny-rm")


@pytest.fixture(scope="session")
async def vllm_engine(tiny_llama):
    """A real vLLM AsyncLLM engine on the tiny Llama, shared by the whole session (start-up takes ~15 s)."""
    from alignd.engines.vllm_local import VLLMEngine

    engine = VLLMEngine("tiny", str(tiny_llama), dict(TINY_ENGINE_ARGS))
    await engine.start()
    yield engine
    await engine.shutdown()


def pytest_sessionfinish(session, exitstatus):
    """Every server and engine a test started must be gone when the suite ends, whatever the test did to it (a
    SIGKILLed vLLM server leaves its engine core behind unless its process group is ended): fail otherwise."""
    deadline = time.time() + 15  # engines shut down by the last fixtures may still be exiting
    while (left := leftover_processes(os.getpid())) and time.time() < deadline:
        time.sleep(0.5)
    if left:
        for pgid in STARTED_GROUPS:
            kill_group(pgid, grace_s=2)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("processes left running by the test suite (now killed):", red=True)
            for line in left:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
