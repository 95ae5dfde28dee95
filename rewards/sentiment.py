"""``sentiment``: VADER's compound sentiment of the answer (a lexicon: nothing to load)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .protocol import Prompt, Reward, RewardParams, register


class SentimentParams(RewardParams):
    pass


@register("sentiment")
class SentimentReward(Reward[SentimentParams]):
    """VADER's compound sentiment score in [-1, 1] (lexicon-based, no model to load).

    >>> import asyncio
    >>> r = SentimentReward("s", SentimentParams(type="sentiment"), None)
    >>> [round(x, 2) for x in asyncio.run(r.score("", ["I love this, it is wonderful!", "This is awful."]))]
    [0.85, -0.46]
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        return [self._analyzer.polarity_scores(text)["compound"] for text in completions]
