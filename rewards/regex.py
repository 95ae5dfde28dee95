"""``regex``: 1 or 0 by whether the answer matches a regular expression (or must not)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from .protocol import Prompt, Reward, RewardParams, register


class RegexParams(RewardParams):
    pattern: str = Field(..., max_length=1000)
    """A Python regular expression."""
    mode: Literal["search", "fullmatch", "must_not_match"] = "search"
    """``search``: 1 if it occurs anywhere; ``fullmatch``: 1 if the whole (stripped) answer matches;
    ``must_not_match``: 1 unless it occurs."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return pattern


@register("regex")
class RegexReward(Reward[RegexParams]):
    """1.0 or 0.0 by whether the completion matches ``pattern`` (per ``mode``)."""

    request_params = frozenset()  # a request-supplied pattern could be catastrophic-backtracking bait

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        p = self.params
        pat = re.compile(p.pattern)
        if p.mode == "fullmatch":
            return [float(pat.fullmatch(t.strip()) is not None) for t in completions]
        hits = [pat.search(t) is not None for t in completions]
        return [float(not h) if p.mode == "must_not_match" else float(h) for h in hits]
