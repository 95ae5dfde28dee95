"""``python``: a Python callable the operator names (``module:function``, or a plug-in's entry point)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from pydantic import Field, model_validator

from .protocol import Prompt, Reward, RewardConfigError, RewardParams, register

ENTRY_POINT_GROUP = "alignd.rewards"


class PythonParams(RewardParams):
    function: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """``module:function`` to import. Only the configuration can name one; requests never can."""
    entry_point: str | None = None
    """The name of a callable published by an installed plug-in under the ``alignd.rewards`` entry-point group."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments passed to every call."""

    @model_validator(mode="after")
    def _one_source(self) -> PythonParams:
        if (self.function is None) == (self.entry_point is None):
            raise ValueError("set exactly one of 'function' (module:function) or 'entry_point'")
        return self


@register("python")
class PythonReward(Reward[PythonParams]):
    """A Python callable ``f(prompt, completions, **kwargs) -> list[float]``, sync or async.

    A sync callable runs in a worker thread so it cannot stall the event loop.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._fn: Callable[..., Any] | None = None

    def _resolve(self) -> Callable[..., Any]:
        p = self.params
        if p.function is not None:
            module_name, _, attr = p.function.partition(":")
            try:
                fn = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise RewardConfigError(f"reward {self.name!r}: cannot import {p.function!r}: {exc}") from None
        else:
            found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == p.entry_point]
            if not found:
                raise RewardConfigError(
                    f"reward {self.name!r}: no installed plug-in publishes {p.entry_point!r} in {ENTRY_POINT_GROUP}"
                )
            fn = found[0].load()
        if not callable(fn):
            raise RewardConfigError(f"reward {self.name!r}: {p.function or p.entry_point!r} is not callable")
        return fn

    async def start(self) -> None:
        if self._fn is None:
            self._fn = self._resolve()

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        if self._fn is None:
            await self.start()
        p = self.params
        fn = self._fn
        assert fn is not None
        if inspect.iscoroutinefunction(fn):
            result = await fn(prompt, list(completions), **p.kwargs)
        else:
            result = await asyncio.to_thread(fn, prompt, list(completions), **p.kwargs)
        return [float(x) for x in result]
