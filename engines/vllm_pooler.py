"""vLLM's pooling runner in this process, for rewards that score with a pooling model (a classifier, a process
reward model): the :class:`~alignd.engines.protocol.Pooler` the ``vllm`` engine adapter gives
(:func:`~alignd.engines.registry.open_pooler`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .protocol import PoolingTask
from .vllm_local import build_async_llm, engine_input, stop_async_llm


class VLLMPooler:
    """:class:`~alignd.engines.protocol.Pooler` on vLLM's pooling runner in this process (a classification or
    process reward model), for rewards: raw logits (``use_activation=False``), every prompt of a call submitted at
    once so vLLM schedules them together.

    >>> pooler = VLLMPooler("/models/reward", {"dtype": "float32"})  # doctest: +SKIP
    >>> await pooler.start(); await pooler.pool([[1, 2, 3]], "classify", "req-1")  # doctest: +SKIP
    """

    def __init__(self, path: str, engine_args: dict[str, Any]):
        self.path = path
        self.engine_args = dict(engine_args)
        self._llm: Any = None

    async def start(self) -> None:
        if self._llm is None:
            self._llm = await asyncio.to_thread(build_async_llm, self.path, self.engine_args, runner="pooling")

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await stop_async_llm(llm)

    async def pool(self, prompts: Sequence[Sequence[int]], task: PoolingTask, request_id: str) -> list[Any]:
        from vllm import PoolingParams

        await self.start()
        params = PoolingParams(task=task, use_activation=False)

        async def one(ids: Sequence[int], rid: str) -> Any:
            final = None
            async for out in self._llm.encode(engine_input(ids), params, rid):
                final = out
            return final.outputs.data.float().tolist()

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(ids, f"{request_id}-{i}")) for i, ids in enumerate(prompts)]
        return [t.result() for t in tasks]
