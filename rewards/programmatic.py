"""Programmatic rewards: length bounds, keyword coverage, regular expressions.

They load nothing and run in microseconds, so a request may override their parameters (the keywords of a
CommonGen-style task differ per prompt; DeAL's length task sets its own bounds).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

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


class KeywordParams(RewardParams):
    keywords: list[str] = Field(default_factory=list, max_length=64)
    """Words the answer should contain; the reward is the fraction present (case-insensitive, whole words)."""
    forbidden: list[str] = Field(default_factory=list, max_length=64)
    """Words the answer must not contain; each one present subtracts 1."""

    @field_validator("keywords", "forbidden")
    @classmethod
    def _bounded(cls, words: list[str]) -> list[str]:
        if any(not w.strip() or len(w) > 100 for w in words):
            raise ValueError("keywords must be non-empty and at most 100 characters")
        return words


@register("keywords")
class KeywordReward(Reward[KeywordParams]):
    """Keyword coverage: fraction of ``keywords`` present minus the number of ``forbidden`` words present.

    >>> import asyncio
    >>> r = KeywordReward("kw", KeywordParams(type="keywords", keywords=["dog", "ball"]), None)
    >>> asyncio.run(r.score("", ["The dog ran.", "A dog and a ball", "cats"]))
    [0.5, 1.0, 0.0]
    """

    request_params = frozenset({"keywords", "forbidden"})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.params
        self._want = [_word_re(w) for w in p.keywords]
        self._ban = [_word_re(w) for w in p.forbidden]

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        scores = []
        for text in completions:
            covered = sum(1 for pat in self._want if pat.search(text)) / len(self._want) if self._want else 0.0
            scores.append(covered - sum(1 for pat in self._ban if pat.search(text)))
        return scores


def _word_re(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word.strip())}(?!\w)", re.IGNORECASE)


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
