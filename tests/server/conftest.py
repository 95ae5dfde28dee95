"""A real ``alignd serve`` process on the tiny models, on a free loopback port, with an API key."""

from __future__ import annotations

from pathlib import Path

import pytest

from serverproc import API_KEY, start_server, stop_server


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
def server(tiny_llama, tiny_classifier, tmp_path_factory):
    proc = start_server(tiny_config(tiny_llama, tiny_classifier), tmp_path_factory.mktemp("server"))
    yield proc
    stop_server(proc)


@pytest.fixture
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)
