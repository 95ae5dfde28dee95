"""``length``: the answer's length, or minus its distance outside bounds. Programmatic: a request may set its
parameters (nothing is loaded)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from .protocol import Prompt, Reward, RewardParams, register


class LengthParams(RewardParams):
    unit: Literal["chars", "words"] = "words"
    """What is counted."""
    min: int | None = Field(None, ge=0, le=1_000_000)
    """Below this, the reward is minus the shortfall (in ``unit``s)."""
    max: int | None = Field(None, ge=0, le=1_000_000)
    """Above this, the reward is minus the excess. With neither bound, the reward is the length itself."""


@register("length")
class LengthReward(Reward[LengthParams]):
    """Length of the completion, or minus its distance outside ``[min, max]`` when bounds are set.

    >>> import asyncio
    >>> r = LengthReward("len", LengthParams(type="length", min=2, max=3), None)
    >>> asyncio.run(r.score("", ["one", "one two", "one two three four five"]))
    [-1.0, 0.0, -2.0]
    """

    request_params = frozenset({"unit", "min", "max"})

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        p = self.params
        scores = []
        for text in completions:
            size = len(text) if p.unit == "chars" else len(text.split())
            if p.min is None and p.max is None:
                scores.append(float(size))
                continue
            short = max(0, (p.min or 0) - size)
            excess = max(0, size - p.max) if p.max is not None else 0
            scores.append(float(-(short + excess)))
        return scores
