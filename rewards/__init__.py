"""Rewards: score completions of a prompt, in batches. Importing this package registers the built-in kinds."""

from . import classifier, combine, judge, pluggable, prm, programmatic, remote, text, vllm_pooling  # noqa: F401
from .protocol import (
    Prompt,
    Reward,
    RewardConfigError,
    RewardContext,
    RewardError,
    RewardParams,
    build_reward,
    prompt_text,
    register,
    reward_kinds,
)
from .scoring import RewardSet, RewardTerm, Scores

__all__ = [
    "Prompt",
    "Reward",
    "RewardConfigError",
    "RewardContext",
    "RewardError",
    "RewardParams",
    "RewardSet",
    "RewardTerm",
    "Scores",
    "build_reward",
    "prompt_text",
    "register",
    "reward_kinds",
]
