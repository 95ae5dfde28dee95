"""``vllm_pooling``: a sequence-classification reward model served by vLLM's pooling runner, in process.

The same kind of model as ``classifier`` (a Hugging Face ``*ForSequenceClassification`` folder), run by vLLM for
speed on a GPU host: ``classify`` pooling with ``use_activation=False`` returns the raw logits, the same numbers
transformers computes, and the activation and label are applied here exactly as ``classifier`` does. Every
text of a batch is submitted at once, so vLLM schedules them together.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from ..engines.protocol import Pooler
from ..engines.registry import open_pooler
from .classifier import ClassifierParams, activate, encode_pair, resolve_label
from .protocol import Prompt, Reward, RewardConfigError, register


class VLLMPoolingParams(ClassifierParams):
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """vLLM engine arguments for the pooling engine (dtype, max_model_len, gpu_memory_utilization, ...)."""
    device: Literal["auto"] = "auto"
    """vLLM places the model itself (kept for symmetry with ``classifier``)."""


@register("vllm_pooling")
class VLLMPoolingReward(Reward[VLLMPoolingParams]):
    """Reward from a classification model run by vLLM's pooling runner (raw logits, activation applied here)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pooler: Pooler | None = None
        self._tokenizer: Any = None
        self._label = 0

    def _build(self) -> Pooler:
        from transformers import AutoConfig, AutoTokenizer

        p = self.params
        tokenizer = AutoTokenizer.from_pretrained(p.path)
        tokenizer.truncation_side = "left"
        config = AutoConfig.from_pretrained(p.path)
        self._label = resolve_label(self.name, p.label, config)
        args = {"dtype": None if p.dtype == "auto" else p.dtype, **p.engine_args}
        args.setdefault("max_model_len", min(p.max_length, getattr(config, "max_position_embeddings", p.max_length)))
        self._tokenizer = tokenizer
        return open_pooler(p.path, args)

    async def start(self) -> None:
        if self._pooler is None:
            pooler = await asyncio.to_thread(self._build)
            await pooler.start()
            self._pooler = pooler

    async def close(self) -> None:
        pooler, self._pooler = self._pooler, None
        if pooler is not None:
            await pooler.shutdown()

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        await self.start()
        assert self._pooler is not None
        p = self.params
        pairs = [encode_pair(self._tokenizer, prompt, c, p.use_chat_template, p.max_length) for c in completions]
        if any(not ids for ids in pairs):
            raise RewardConfigError(f"reward {self.name!r}: an input tokenized to nothing")
        rows = await self._pooler.pool(pairs, "classify", f"reward-{self.name}-{uuid.uuid4().hex[:12]}")
        return [activate(row, p.activation)[self._label] for row in rows]
