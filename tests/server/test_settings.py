"""Configuration precedence (flags > ALIGND_* > YAML > defaults), validation and the CLI's help."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from alignd.decoders.protocol import CAPS
from alignd.server.cli import ServeCommand
from alignd.server.settings import Limits, Settings


def _parse(args, monkeypatch, env=None, yaml_data=None, tmp_path=None):
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    if yaml_data is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(yaml_data))
        monkeypatch.setenv("ALIGND_CONFIG", str(path))
    from pydantic_settings import CliApp

    captured = {}

    class Probe(ServeCommand):
        def cli_cmd(self):
            captured["s"] = self

    CliApp.run(Probe, cli_args=args)
    return captured["s"]


def test_flags_beat_env_beat_yaml_beat_defaults(monkeypatch, tmp_path):
    data = {"port": 7000, "limits": {"max_n": 3, "max_tokens": 99}, "models": {"m": {"path": "/x"}}}
    s = _parse([], monkeypatch, env={"ALIGND_PORT": "8100"}, yaml_data=data, tmp_path=tmp_path)
    assert s.port == 8100 and s.limits.max_n == 3 and list(s.models) == ["m"]
    s = _parse(
        ["--port", "9", "--limits.max-n", "5"],
        monkeypatch,
        env={"ALIGND_PORT": "8100"},
        yaml_data=data,
        tmp_path=tmp_path,
    )
    assert s.port == 9 and s.limits.max_n == 5 and s.limits.max_tokens == 99
    monkeypatch.setenv("ALIGND_LIMITS__MAX_TOKENS", "50")
    assert _parse([], monkeypatch).limits.max_tokens == 50


def test_defaults_are_loopback_and_the_default_model():
    s = Settings()
    assert s.host == "127.0.0.1" and s.port == 8000
    assert s.default_model_name == "smollm2-135m-instruct"
    assert {"judge", "length", "keywords"} <= set(s.rewards)
    # one of every reward kind that runs offline with nothing to configure, declared by default
    kinds = {config.type for config in s.rewards.values()}  # typed by their kinds from the moment they are read
    assert {"judge", "length", "keywords", "sentiment", "embedding", "json_schema", "regex", "sum"} <= kinds
    assert all(type(config).__name__ != "RewardParams" for config in s.rewards.values())


def test_invalid_settings_say_what_to_change():
    with pytest.raises(ValidationError, match="default_model 'nope'"):
        Settings(default_model="nope")
    with pytest.raises(ValidationError):
        Settings(limits={"max_n": 0})
    with pytest.raises(ValidationError):
        Settings(unknown_field=1)


def test_secrets_are_redacted():
    s = Settings(api_keys=["sk-very-secret"])
    assert "sk-very-secret" not in str(s.redacted()) and "sk-very-secret" not in repr(s)


def test_cli_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "alignd.server.cli", "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--port", "--config", "--limits.max-concurrent-requests", "--api-keys", "--models"):
        assert flag in out.stdout
    assert "Interface to bind" in out.stdout
    top = subprocess.run([sys.executable, "-m", "alignd.server.cli", "--help"], capture_output=True, text=True)
    assert "serve" in top.stdout and "prepare" in top.stdout


def test_remote_models_need_servers_and_take_their_options_as_engine_args():
    s = Settings(models={"m": {"engine": "remote", "path": "/tok", "engine_args": {"urls": ["http://gpu1:8000/v1"]}}})
    assert s.models["m"].engine_args.urls == ["http://gpu1:8000/v1"] and s.models["m"].engine_args.retries == 2
    # the spelling before engines registered by name: `remote:` is a remote engine's engine_args
    legacy = Settings(models={"m": {"remote": {"urls": ["http://a"]}}})
    assert legacy.models["m"].engine == "remote" and legacy.models["m"].engine_args.urls == ["http://a"]
    with pytest.raises(ValidationError, match="give either router"):
        Settings(models={"m": {"engine": "remote"}})
    with pytest.raises(ValidationError, match="dtype: Extra inputs are not permitted"):
        Settings(models={"m": {"engine": "remote", "engine_args": {"urls": ["http://a"], "dtype": "half"}}})
    with pytest.raises(ValidationError, match="keep engine_args only"):
        Settings(models={"m": {"engine": "remote", "remote": {"urls": ["http://a"]}, "engine_args": {"dtype": "half"}}})
    with pytest.raises(ValidationError, match="engine is 'vllm'"):
        Settings(models={"m": {"engine": "vllm", "remote": {"urls": ["http://a"]}}})
    with pytest.raises(ValidationError, match="not an engine adapter here; use one of \\['remote', 'vllm'\\]"):
        Settings(models={"m": {"engine": "sglang"}})
    with pytest.raises(ValidationError):
        Settings(models={"m": {"engine": "remote", "engine_args": {"urls": []}}})
    secret = Settings(models={"m": {"engine": "remote", "engine_args": {"urls": ["http://a"], "api_key": "sk-fleet"}}})
    assert "sk-fleet" not in str(secret.redacted())


def test_parallelism_arguments_reach_vllm_unchanged(tiny_llama):
    """tensor/pipeline parallelism and the executor backend are vLLM's own: alignd only passes them through."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from alignd.server.runtime import build_engines

    parallel = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray"}
    s = Settings(models={"big": {"path": str(tiny_llama), "engine_args": {**parallel, "max_num_seqs": 8}}})
    [engine] = build_engines(s).values()
    assert engine.engine_args == {**parallel, "max_num_seqs": 8}
    args = AsyncEngineArgs(model=str(tiny_llama), **engine.engine_args)
    assert (args.tensor_parallel_size, args.pipeline_parallel_size, args.distributed_executor_backend) == (2, 2, "ray")
    with pytest.raises(ValidationError):
        Settings(models={"big": {"engine_args": {"distributed_executor_backend": "slurm"}}})


def test_every_limit_a_decoder_can_be_capped_by_is_a_server_limit():
    assert CAPS <= set(Limits.model_fields)
