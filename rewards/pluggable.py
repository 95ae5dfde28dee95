"""``python`` (a callable the operator names) and ``implicit`` (the DPO implicit reward of two served models)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import uuid
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from pydantic import Field, model_validator

from ..engines.protocol import Engine
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


class ImplicitParams(RewardParams):
    policy: str
    """The served model pi (e.g. a DPO-tuned one)."""
    reference: str
    """The served model pi_ref it was tuned from."""
    beta: float = Field(0.1, gt=0.0, le=100.0)
    """beta of the DPO objective."""


@register("implicit")
class ImplicitReward(Reward[ImplicitParams]):
    """The DPO implicit reward beta * (log pi(y|x) - log pi_ref(y|x)), from two served models' log-probs.

    Both models must share a tokenizer. Each model scores the whole batch in one engine call (teacher-forced
    continuation log-probs), the two calls running concurrently.
    """

    def _engines(self) -> tuple[Engine, Engine]:
        p = self.params
        engines = self.context.engines
        missing = [m for m in (p.policy, p.reference) if m not in engines]
        if missing:
            raise RewardConfigError(f"reward {self.name!r}: models {missing} are not served; have {sorted(engines)}")
        return engines[p.policy], engines[p.reference]

    async def start(self) -> None:
        policy, reference = self._engines()
        if policy.info.vocab_size != reference.info.vocab_size:
            raise RewardConfigError(f"reward {self.name!r}: policy and reference must share a tokenizer")

    def _prompt_ids(self, engine: Engine, prompt: Prompt) -> list[int]:
        tok = engine.tokenizer
        if isinstance(prompt, str):
            return tok.encode(prompt, add_special_tokens=True)
        return tok.encode(tok.apply_chat_template(prompt), add_special_tokens=False)

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        p = self.params
        policy, reference = self._engines()
        x = self._prompt_ids(policy, prompt)
        ys = [policy.tokenizer.encode(c) for c in completions]
        tag = f"reward-{self.name}-{uuid.uuid4().hex[:12]}"
        pi, ref = await asyncio.gather(
            policy.continuation_logprobs([x] * len(ys), ys, f"{tag}-pi"),
            reference.continuation_logprobs([x] * len(ys), ys, f"{tag}-ref"),
        )
        return [p.beta * (sum(a) - sum(b)) for a, b in zip(pi, ref)]
