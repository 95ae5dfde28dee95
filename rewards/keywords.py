"""``keywords``: coverage of words the answer should contain, minus forbidden ones (DeAL's and CommonGen's
keyword tasks). Programmatic: a request may set its keywords."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field, field_validator

from .protocol import Prompt, Reward, RewardParams, register


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
