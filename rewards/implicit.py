"""``implicit``: the DPO implicit reward of two served models, from their teacher-forced log-probs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from pydantic import Field

from ..engines.protocol import Engine
from .protocol import Prompt, Reward, RewardConfigError, RewardParams, prompt_ids, register


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

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        p = self.params
        policy, reference = self._engines()
        x = prompt_ids(policy, prompt)
        ys = [policy.tokenizer.encode(c) for c in completions]
        tag = f"reward-{self.name}-{uuid.uuid4().hex[:12]}"
        pi, ref = await asyncio.gather(
            policy.continuation_logprobs([x] * len(ys), ys, f"{tag}-pi"),
            reference.continuation_logprobs([x] * len(ys), ys, f"{tag}-ref"),
        )
        return [p.beta * (sum(a) - sum(b)) for a, b in zip(pi, ref)]
