"""``sum``: a declared weighted combination of other declared rewards, usable wherever one reward is."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from .protocol import Prompt, Reward, RewardConfigError, RewardParams, register
from .scoring import RewardSet, RewardTerm


class SumParams(RewardParams):
    components: dict[str, float] = Field(..., min_length=1, max_length=16)
    """Names of other declared rewards and their weights, e.g. ``{judge: 1.0, short: 0.1}``."""


@register("sum")
class SumReward(Reward[SumParams]):
    """Weighted sum of other declared rewards; each component keeps its own timeout and failure policy.

    A component that drops a candidate makes the sum NaN for it, so this reward's own ``on_error`` decides.
    """

    def _set(self) -> RewardSet:
        p = self.params
        terms = []
        for name, weight in p.components.items():
            reward = self.context.rewards.get(name) if self.context else None
            if reward is None or reward is self:
                raise RewardConfigError(
                    f"reward {self.name!r}: component {name!r} is not a declared reward (declare it before the sum)"
                )
            terms.append(RewardTerm(reward, weight))
        return RewardSet(terms)

    async def start(self) -> None:
        self._set()  # fail at start-up, not on the first request, if a component is missing

    @property
    def upstream(self) -> bool:  # type: ignore[override]
        return any(t.reward.upstream for t in self._set().terms)

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        scores = await self._set().score(prompt, completions)
        return [math.nan if v is None else v for v in scores.total]
