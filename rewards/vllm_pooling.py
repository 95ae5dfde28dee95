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
        self._llm: Any = None
        self._tokenizer: Any = None
        self._label = 0

    def _build(self) -> Any:
        from transformers import AutoConfig, AutoTokenizer

        from ..engines.vllm_local import build_async_llm

        p = self.params
        tokenizer = AutoTokenizer.from_pretrained(p.path)
        tokenizer.truncation_side = "left"
        config = AutoConfig.from_pretrained(p.path)
        self._label = resolve_label(self.name, p.label, config)
        args = {"dtype": None if p.dtype == "auto" else p.dtype, **p.engine_args}
        args.setdefault("max_model_len", min(p.max_length, getattr(config, "max_position_embeddings", p.max_length)))
        self._tokenizer = tokenizer
        return build_async_llm(p.path, args, runner="pooling")

    async def start(self) -> None:
        if self._llm is None:
            self._llm = await asyncio.to_thread(self._build)

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            from ..engines.vllm_local import stop_async_llm

            await stop_async_llm(llm)

    async def _one(self, ids: list[int], request_id: str) -> list[float]:
        from vllm import PoolingParams

        from ..engines.vllm_local import engine_input

        final = None
        params = PoolingParams(task="classify", use_activation=False)
        async for out in self._llm.encode(engine_input(ids), params, request_id):
            final = out
        return final.outputs.data.float().tolist()

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        if self._llm is None:
            await self.start()
        p = self.params
        tag = f"reward-{self.name}-{uuid.uuid4().hex[:12]}"
        pairs = [encode_pair(self._tokenizer, prompt, c, p.use_chat_template, p.max_length) for c in completions]
        if any(not ids for ids in pairs):
            raise RewardConfigError(f"reward {self.name!r}: an input tokenized to nothing")
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._one(ids, f"{tag}-{i}")) for i, ids in enumerate(pairs)]
        return [activate(t.result(), p.activation)[self._label] for t in tasks]
