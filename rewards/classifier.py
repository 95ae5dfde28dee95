"""``classifier``: a Hugging Face sequence-classification reward model from a local folder, run with transformers.

Batched with padding on CPU or CUDA. When the model's tokenizer has a chat template (as reward models such as
Skywork-Reward expect), each candidate is rendered as the conversation plus an assistant turn; otherwise the
prompt and the completion are given as a text pair.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from .batching import MicroBatcher
from .protocol import Prompt, Reward, RewardConfigError, RewardParams, prompt_text, register


class ClassifierParams(RewardParams):
    path: str
    """Local folder of an ``AutoModelForSequenceClassification`` model (config.json, weights, tokenizer)."""
    label: int | str = 0
    """Which output is the reward: a logit index or a label name from the model's ``id2label``."""
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    """Applied to the logits before ``label`` is read; ``none`` returns the raw logit (most reward models)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Torch dtype of the weights; ``auto`` uses the checkpoint's."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:1``...; ``auto`` picks CUDA when available."""
    batch_size: int = Field(16, ge=1, le=1024)
    """Candidates per forward pass."""
    max_length: int = Field(4096, ge=8, le=131072)
    """Inputs are truncated to this many tokens (from the left of the prompt side, keeping the answer)."""
    use_chat_template: bool | None = None
    """Render prompt and answer with the tokenizer's chat template; default: when it has one."""
    batch_window_ms: float = Field(5.0, ge=0.0, le=1000.0)
    """Score calls of concurrent requests arriving within this window share forward passes (0: no merging)."""
    max_batch: int = Field(64, ge=1, le=4096)
    """Most texts merged from concurrent requests into one batched call."""

    @field_validator("path")
    @classmethod
    def _local(cls, path: str) -> str:
        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"{path!r} is not a local model folder (no config.json); download it first")
        return path


def resolve_label(reward: str, label: int | str, config: Any) -> int:
    """The logit index of ``label`` (an index or a name from the model's ``id2label``)."""
    if isinstance(label, int):
        if not 0 <= label < config.num_labels:
            raise RewardConfigError(f"reward {reward!r}: label {label} but the model has {config.num_labels} outputs")
        return label
    names = {v: int(k) for k, v in (config.id2label or {}).items()}
    if label not in names:
        raise RewardConfigError(f"reward {reward!r}: label {label!r} not in the model's labels {sorted(names)}")
    return names[label]


def activate(logits: list[float], activation: str) -> list[float]:
    """Apply ``none``, ``sigmoid`` or ``softmax`` to one row of logits (in float64, so every backend agrees)."""
    if activation == "sigmoid":
        return [1.0 / (1.0 + math.exp(-x)) for x in logits]
    if activation == "softmax":
        top = max(logits)
        exps = [math.exp(x - top) for x in logits]
        return [e / sum(exps) for e in exps]
    return list(logits)


def uses_chat_template(tokenizer: Any, use_chat_template: bool | None) -> bool:
    return use_chat_template if use_chat_template is not None else bool(getattr(tokenizer, "chat_template", None))


def encode_pair(
    tokenizer: Any, prompt: Prompt, completion: str, use_chat_template: bool | None, max_length: int
) -> list[int]:
    """Token ids of one (prompt, completion) input, exactly as :class:`ClassifierReward` batches them."""
    if uses_chat_template(tokenizer, use_chat_template):
        history = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = tokenizer.apply_chat_template(history + [{"role": "assistant", "content": completion}], tokenize=False)
        return tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    return tokenizer(prompt_text(prompt), completion, truncation=True, max_length=max_length)["input_ids"]


@register("classifier")
class ClassifierReward(Reward[ClassifierParams]):
    """Reward from a sequence-classification model's logit (or activated probability) for one label."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._model: Any = None
        self._tokenizer: Any = None
        self._label = 0
        self._device = "cpu"
        # One forward pass at a time: torch already uses every core for one batch.
        self._lock = threading.Lock()
        self.forward_passes = 0
        p = self.params
        self._batcher = MicroBatcher(self._score_pairs, p.batch_window_ms / 1000, p.max_batch)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = self.params
        self._device = p.device if p.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = "auto" if p.dtype == "auto" else getattr(torch, p.dtype)
        tokenizer = AutoTokenizer.from_pretrained(p.path)
        model = AutoModelForSequenceClassification.from_pretrained(p.path, dtype=dtype)
        if tokenizer.pad_token is None:  # Llama-style reward models ship without one
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        tokenizer.truncation_side = "left"
        self._label = resolve_label(self.name, p.label, model.config)
        self._model = model.to(self._device).eval()
        self._tokenizer = tokenizer

    async def start(self) -> None:
        if self._model is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._model = None

    def _inputs(self, pairs: Sequence[tuple[Prompt, str]]) -> dict[str, Any]:
        # Batched with padding; encode_pair below gives the same ids for one pair (vllm_pooling uses it).
        p = self.params
        tok = self._tokenizer
        chat = uses_chat_template(tok, p.use_chat_template)
        common = dict(padding=True, truncation=True, max_length=p.max_length, return_tensors="pt")
        if chat:
            texts = []
            for prompt, completion in pairs:
                history = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
                messages = history + [{"role": "assistant", "content": completion}]
                texts.append(tok.apply_chat_template(messages, tokenize=False))
            return tok(texts, add_special_tokens=False, **common)
        return tok([prompt_text(q) for q, _ in pairs], [c for _, c in pairs], **common)

    def _score_pairs(self, pairs: list[tuple[Prompt, str]]) -> list[float]:
        """Score (prompt, completion) pairs, ``batch_size`` per forward pass; pairs may come from several requests."""
        import torch

        p = self.params
        out: list[float] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(pairs), p.batch_size):
                batch = self._inputs(pairs[start : start + p.batch_size])
                self.forward_passes += 1
                logits = self._model(**{k: v.to(self._device) for k, v in batch.items()}).logits.float()
                out.extend(activate(row, p.activation)[self._label] for row in logits.tolist())
        return out

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        if self._model is None:
            await self.start()
        return await self._batcher.run([(prompt, c) for c in completions])
