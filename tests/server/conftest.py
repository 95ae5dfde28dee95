"""A real ``alignd serve`` process on the tiny models, on a free loopback port, with an API key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serverproc import API_KEY, start_server, stop_server
from testplugins import install_example_plugin, write_test_plugins


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
