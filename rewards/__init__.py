"""Rewards: score completions of a prompt, in batches. Importing this package registers the built-in kinds."""

from . import (  # noqa: F401  (importing registers them)
    classifier,
    embedding,
    implicit,
    json_schema,
    judge,
    keywords,
    length,
    prm,
    python,
    regex,
    remote,
    self_certainty,
    sentiment,
    sum,
    vllm_pooling,
)
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
