"""Cross-request batching for rewards that run a local model: concurrent score calls share forward passes.

Calls arriving within ``window_s`` of each other (up to ``max_items`` texts) are merged into one call of the
underlying batch function, run in a worker thread, and the results are split back. Two requests scoring their
candidates at the same time therefore make one forward pass, not two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Merge concurrent ``await batcher.run(items)`` calls into batched calls of ``fn(items) -> list[R]``.

    >>> import asyncio
    >>> calls = []
    >>> def fn(items):
    ...     calls.append(len(items))
    ...     return [float(x) for x in items]
    >>> async def main():
    ...     b = MicroBatcher(fn, window_s=0.01, max_items=100)
    ...     return await asyncio.gather(b.run([1, 2]), b.run([3]))
    >>> asyncio.run(main()), calls
    ([[1.0, 2.0], [3.0]], [3])
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], window_s: float, max_items: int):
        self.fn = fn
        self.window_s = window_s
        self.max_items = max_items
        self.batches = 0
        self._pending: list[tuple[list[T], asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    async def run(self, items: Sequence[T]) -> list[R]:
        if self.window_s <= 0:
            self.batches += 1
            return list(await asyncio.to_thread(self.fn, list(items)))
        future = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            if sum(len(items) for items, _ in self._pending) < self.max_items:
                await asyncio.sleep(self.window_s)  # let concurrent callers join this batch
            batch, size = [], 0
            while self._pending and (not batch or size + len(self._pending[0][0]) <= self.max_items):
                items, future = self._pending.pop(0)
                if future.cancelled():  # its caller went away: do not spend a forward pass on it
                    continue
                batch.append((items, future))
                size += len(items)
            if not batch:
                continue
            flat = [item for items, _ in batch for item in items]
            self.batches += 1
            try:
                scores = await asyncio.to_thread(self.fn, flat)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            offset = 0
            for items, future in batch:
                if not future.done():
                    future.set_result(list(scores[offset : offset + len(items)]))
                offset += len(items)
