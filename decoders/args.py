"""``args``: ARGS, reward-guided search (Khanov et al. 2024, "ARGS: Alignment as Reward-Guided Search", arXiv
2402.01694): each token by log pi(z | s) + w * r(prefix + z) over the top-k next tokens, Transfer Q*'s search
without rollouts (:class:`~alignd.decoders.transfer_q.TokenGuidance`). All k scored prefixes of a step are one
reward call."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .protocol import DecoderParams, cap, register
from .transfer_q import TokenGuidance, TransferQParams


class ARGSParams(DecoderParams):
    top_k: int = Field(10, ge=1, le=64, json_schema_extra=cap("max_logprobs"))
    """k, tokens considered per step."""
    weight: float = Field(1.0, ge=0.0, le=1e9)
    """w: score = log pi(z | s) + w * r(prefix + z)."""
    mode: Literal["greedy", "sample"] = "greedy"
    """``greedy``: argmax of the score; ``sample``: draw from softmax(score / temperature)."""
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    """Temperature of ``mode=sample``."""


@register("args")
class ARGS(TokenGuidance[ARGSParams]):
    """ARGS (Khanov et al. 2024): Transfer Q* without rollouts, score = log pi(z | s) + w * r(prefix + z)."""

    description = "ARGS: token choice by log pi + w * reward of the prefix with the token (no rollout)."

    def search_params(self) -> TransferQParams:
        p = self.params
        # alpha = 1/w; w = 0 (plain greedy) becomes the largest alpha allowed.
        alpha = 1.0 / p.weight if p.weight > 1e-9 else 1e9
        return TransferQParams(top_k=p.top_k, rollout_tokens=0, alpha=alpha, mode=p.mode, temperature=p.temperature)
