"""Shared fixtures: tiny local models, a real vLLM engine on the tiny Llama, a real server on them."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from testplugins import install_example_plugin, write_test_plugins  # noqa: E402

from alignd.engines.vllm_local import private_rpc_folder  # noqa: E402

from serverproc import API_KEY, STARTED_GROUPS, kill_group, leftover_processes, start_server, stop_server  # noqa: E402
from tiny_models import build_tiny_classifier, build_tiny_llama  # noqa: E402

# The tests must never reach a hub: everything they load is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# vLLM's IPC socket files, of this process's engines and of every server and vLLM process the tests start (they
# inherit it), go to one folder removed when the run ends.
private_rpc_folder()

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


# ---- a real `alignd serve` on the tiny models (tests/server, tests/evaluation) ----------------------------


def tiny_config(tiny_llama: Path, tiny_classifier: Path, **limits) -> dict:
    return {
        "models": {
            "tiny": {
                "path": str(tiny_llama),
                "engine_args": {"dtype": "float32", "max_model_len": 512, "kv_cache_memory_bytes": 64 << 20},
            }
        },
        "rewards": {
            "judge": {"type": "judge"},
            "length": {"type": "length", "unit": "chars"},
            "keywords": {"type": "keywords"},
            "rm": {"type": "classifier", "path": str(tiny_classifier)},
        },
        "limits": {"max_n": 8, "max_candidates": 16, "max_concurrent_requests": 6, **limits},
        "api_keys": [API_KEY],
    }


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory) -> str:
    """PYTHONPATH for servers with plug-ins: the test plug-ins, and the README's example plug-in pip-installed."""
    tests = write_test_plugins(tmp_path_factory.mktemp("test-plugins"))
    example = install_example_plugin(tmp_path_factory.mktemp("example-plugin"))
    return os.pathsep.join([str(tests), str(example)])


@pytest.fixture(scope="session")
def server(tiny_llama, tiny_classifier, tmp_path_factory, plugin_path):
    config = tiny_config(tiny_llama, tiny_classifier)
    config["rewards"]["flaky"] = {"type": "python", "function": "alignd_test_plugins:fail_on_third_call"}
    config["rewards"]["readability"] = {"type": "reading_ease"}  # from the example plug-in
    # The shipped URIAL prefix (~530 SmolLM2 tokens) does not fit the tiny model's 512-token context
    urial = tmp_path_factory.mktemp("urial") / "urial.md"
    urial.write_text("Be kind.\n\n# Query:\n```\nHi\n```\n\n# Answer:\n```\nHello!\n```\n")
    config["decoder_options"] = {"urial": {"prompt_file": str(urial)}}
    proc = start_server(config, tmp_path_factory.mktemp("server"), env={"PYTHONPATH": plugin_path})
    yield proc
    stop_server(proc)


@pytest.fixture
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


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


@pytest.fixture(scope="session")
def tiny_prm(tiny_dir) -> Path:
    from tiny_models import build_tiny_prm

    return build_tiny_prm(tiny_dir / "tiny-prm")


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """alignd with its own defaults (the default model, the shipped rewards); only the port is set."""
    from alignd.engines.models import prepare_default_model

    prepare_default_model()  # ~20 s the first time, then reused from $ALIGND_HOME
    server = start_server({}, tmp_path_factory.mktemp("default"))
    yield server
    stop_server(server)
