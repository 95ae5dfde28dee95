"""Shared fixtures: tiny local models, a real vLLM engine on the tiny Llama, and the scripted engine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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
