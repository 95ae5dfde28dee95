"""Scoring a batch of candidates with the rewards a request selected, under each reward's failure policy.

A request names one reward or a weighted list of declared rewards. :class:`RewardSet` calls each of them once
for the whole batch (concurrently when there are several), enforces each reward's timeout, and applies its
``on_error`` policy: ``fail`` raises :class:`RewardError`; ``drop`` excludes the affected candidates and says why.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..engines.metering import attributed_to, reward_source
from ..engines.protocol import EngineError
from ..tracing import span
from .protocol import Prompt, Reward, RewardError


def calibrate(value: float, references: Sequence[float]) -> float:
    """Empirical CDF with ties counted one half: P[r(z) < value] + 1/2 P[r(z) = value] over sorted references.

    >>> calibrate(2.0, [1.0, 2.0, 3.0, 4.0])
    0.375
    """
    below = bisect.bisect_left(references, value)
    ties = bisect.bisect_right(references, value) - below
    return (below + 0.5 * ties) / len(references)


def normalize(values: list[float | None], how: str) -> list[float | None]:
    """Batch normalization of one reward's scores (``None`` entries, dropped candidates, are left out).

    >>> normalize([1.0, 2.0, 3.0], "zscore")
    [-1.224744871391589, 0.0, 1.224744871391589]
    >>> normalize([1.0, 2.0, 3.0], "cdf")
    [0.0, 0.5, 1.0]
    """
    present = [v for v in values if v is not None]
    if how == "none" or not present:
        return values
    if how == "zscore":
        mean = sum(present) / len(present)
        std = math.sqrt(sum((v - mean) ** 2 for v in present) / len(present))
        return [None if v is None else (0.0 if std == 0 else (v - mean) / std) for v in values]
    if len(present) < 2:
        return [None if v is None else 0.5 for v in values]
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        others = sorted(o for j, o in enumerate(values) if j != i and o is not None)
        out.append(calibrate(v, others))
    return out


@dataclass(slots=True)
class RewardTerm:
    reward: Reward
    weight: float = 1.0


@dataclass(slots=True)
class Scores:
    """Scores of one batch: the weighted total and each reward's raw score (``None`` where dropped)."""

    total: list[float | None]
    per_reward: dict[str, list[float | None]]
    dropped: dict[int, str] = field(default_factory=dict)
    """Candidate index -> why it has no score."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each reward's call."""


class RewardSet:
    """A weighted sum of rewards, scored as one batch per reward.

    >>> import asyncio
    >>> from alignd.rewards import build_reward
    >>> short = build_reward("short", {"type": "length", "max": 2})
    >>> kw = build_reward("kw", {"type": "keywords", "keywords": ["sea"]})
    >>> s = asyncio.run(RewardSet([RewardTerm(short, 1.0), RewardTerm(kw, 2.0)]).score("", ["the sea", "a b c"]))
    >>> s.total
    [2.0, -1.0]
    """

    def __init__(self, terms: Sequence[RewardTerm]):
        if not terms:
            raise ValueError("a RewardSet needs at least one reward")
        self.terms = list(terms)

    @property
    def names(self) -> list[str]:
        return [t.reward.name for t in self.terms]

    @property
    def version(self) -> str:
        return "+".join(f"{t.weight:g}*{t.reward.name}@{t.reward.version}" for t in self.terms)

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> Scores:
        n = len(completions)
        if n == 0:
            return Scores(total=[], per_reward={t.reward.name: [] for t in self.terms})
        results = await asyncio.gather(*(self._one(t.reward, prompt, completions) for t in self.terms))
        per_reward: dict[str, list[float | None]] = {}
        dropped: dict[int, str] = {}
        seconds: dict[str, float] = {}
        for term, (values, reasons, elapsed) in zip(self.terms, results):
            per_reward[term.reward.name] = values
            seconds[term.reward.name] = elapsed
            for i, why in reasons.items():
                dropped.setdefault(i, why)
        total: list[float | None] = []
        for i in range(n):
            if i in dropped:
                total.append(None)
                continue
            total.append(sum(t.weight * (per_reward[t.reward.name][i] or 0.0) for t in self.terms))
        return Scores(total=total, per_reward=per_reward, dropped=dropped, seconds=seconds)

    async def _one(
        self, reward: Reward, prompt: Prompt, completions: Sequence[str]
    ) -> tuple[list[float | None], dict[int, str], float]:
        n = len(completions)
        start = time.perf_counter()
        policy = reward.params.on_error
        upstream = reward.upstream
        try:
            # Engine work the reward causes (a judge's verdicts) is counted under its own name.
            with attributed_to(reward_source(reward.name)), span("reward.score", reward=reward.name, texts=n):
                async with asyncio.timeout(reward.params.timeout_s):
                    raw = await reward.score(prompt, list(completions))
        except TimeoutError:
            why = f"reward {reward.name!r} timed out after {reward.params.timeout_s:g} s"
            if policy == "fail":
                raise RewardError(why, reward=reward.name, upstream=upstream) from None
            return [None] * n, dict.fromkeys(range(n), why), time.perf_counter() - start
        except RewardError:
            if policy == "fail":
                raise
            why = f"reward {reward.name!r} failed"
            return [None] * n, dict.fromkeys(range(n), why), time.perf_counter() - start
        except EngineError:
            # The engine a judge runs on is down or failing: the server's problem (503/502), not this reward's.
            raise
        except Exception as exc:
            # The scorer's own message can carry paths or internals: keep it in the log, not in the response.
            why = f"reward {reward.name!r} raised {type(exc).__name__}"
            if policy == "fail":
                raise RewardError(why, reward=reward.name, upstream=upstream) from exc
            return [None] * n, dict.fromkeys(range(n), why), time.perf_counter() - start
        elapsed = time.perf_counter() - start
        if len(raw) != n:
            why = f"reward {reward.name!r} returned {len(raw)} scores for {n} completions"
            if policy == "fail":
                raise RewardError(why, reward=reward.name, upstream=upstream)
            return [None] * n, dict.fromkeys(range(n), why), elapsed
        values: list[float | None] = []
        reasons: dict[int, str] = {}
        for i, v in enumerate(raw):
            v = float(v)
            if math.isnan(v):
                why = f"reward {reward.name!r} returned NaN"
                if policy == "fail":
                    raise RewardError(why, reward=reward.name, upstream=upstream)
                reasons[i] = why
                values.append(None)
            else:
                values.append(v)
        return normalize(values, reward.params.normalize), reasons, elapsed
