"""An example alignd plug-in: ``reading_ease`` (a reward kind) and ``first_good`` (a decoder).

Both are ordinary classes on alignd's public protocols, found by alignd through the entry points in this
package's ``pyproject.toml``; nothing in alignd names them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field

from alignd.decoders import (
    Candidate,
    DecodeContext,
    Decoder,
    DecodeRequest,
    DecodeResult,
    DecoderParams,
    cap,
    ranked_or_raise,
)
from alignd.rewards import Prompt, Reward, RewardParams

_WORD = re.compile(r"[A-Za-z]+")
_VOWELS = re.compile(r"[aeiouy]+")


def syllables(word: str) -> int:
    """A rough English syllable count: groups of vowels, a silent final 'e' dropped, at least one."""
    word = word.lower()
    count = len(_VOWELS.findall(word))
    if word.endswith("e") and count > 1 and not word.endswith("le"):
        count -= 1
    return max(count, 1)


def flesch(text: str) -> float:
    """Flesch reading ease: 206.835 - 1.015 * words/sentence - 84.6 * syllables/word (higher: easier).

    >>> round(flesch("The cat sat on the mat."), 1)
    116.1
    """
    words = _WORD.findall(text)
    if not words:
        return 0.0
    sentences = max(1, len(re.findall(r"[.!?]+", text)))
    return 206.835 - 1.015 * len(words) / sentences - 84.6 * sum(map(syllables, words)) / len(words)


class ReadingEaseParams(RewardParams):
    target: float | None = Field(None, ge=-100.0, le=150.0)
    """Reward closeness to this Flesch score instead of ease itself (e.g. 60 for plain adult prose)."""


class ReadingEase(Reward[ReadingEaseParams]):
    """How easy an answer is to read (Flesch reading ease), or minus its distance from ``target``."""

    request_params = frozenset({"target"})  # a number, nothing to load: safe for requests to override

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        scores = [flesch(text) for text in completions]
        if self.params.target is None:
            return scores
        return [-abs(s - self.params.target) for s in scores]


class FirstGoodParams(DecoderParams):
    threshold: float = Field(0.0, ge=-1e6, le=1e6)
    """Stop at the first candidate whose reward reaches this."""
    round_size: int = Field(2, ge=1, le=64, json_schema_extra=cap("max_candidates"))
    """Candidates drawn per round (one engine call, one reward call)."""
    max_candidates: int = Field(8, ge=1, le=256, json_schema_extra=cap("max_candidates"))
    """Most candidates drawn in all; if none is good enough, the best of them is returned."""


class FirstGood(Decoder[FirstGoodParams]):
    """Satisficing best-of-N: sample in rounds and stop as soon as a candidate is good enough."""

    requires_reward = True
    single_answer = True  # a request with n > 1 is refused on "n"
    description = "Sample in rounds; return the first candidate whose reward reaches the threshold."

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        p = self.params
        candidates = []
        rounds = 0
        while len(candidates) < p.max_candidates:
            size = min(p.round_size, p.max_candidates - len(candidates))
            seed = None if request.sampling.seed is None else request.sampling.seed + rounds
            with ctx.phase("generate"):
                [gen] = await ctx.engine.generate(
                    [request.prompt_token_ids],
                    request.sampling.but(n=size, seed=seed),
                    f"{request.request_id}-r{rounds}",
                )
            fresh = [Candidate.of(c, index=len(candidates) + i) for i, c in enumerate(gen.completions)]
            await ctx.score(request.prompt, fresh)
            candidates.extend(fresh)
            rounds += 1
            good = next((c for c in fresh if c.reward is not None and c.reward >= p.threshold), None)
            if good is not None:
                return ctx.result(request, [good], candidates, rounds=rounds, reached=True)
        # None was good enough: the best of them (ranked_or_raise says why if the reward dropped every one).
        return ctx.result(request, ranked_or_raise(candidates, 1), candidates, rounds=rounds, reached=False)
