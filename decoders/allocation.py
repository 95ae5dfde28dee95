"""One budget for several prompts: a pilot round per prompt, then the rest where more samples are expected to gain
most (adaptive best-of-N, Raman, Asi and Kale 2025; compute-optimal allocation, Snell et al. 2024, arXiv
2408.03314).

Best-of-N's reward is the maximum of the rewards drawn. With a prompt's pilot rewards fitted by a normal law of
spread sigma, the expected maximum of n draws is mu + sigma e(n), with e(n) ~ Phi^-1((n - 0.375) / (n + 0.25))
(Blom's approximation of normal order statistics), so the k-th extra sample of a prompt that has n is expected to
add sigma (e(n + 1) - e(n)). Samples are handed out one at a time to the prompt whose next one gains most per
engine token (its pilot's mean tokens per sample), until the budget runs out: prompts whose samples all score alike
(sigma ~ 0: nothing to choose between) get nothing more, prompts whose rewards spread get the most.

>>> round(expected_max_gain(1.0, 4), 4)  # the fifth sample of a prompt with spread 1
0.1306
>>> allocate([0.0, 1.0, 2.0], [10, 10, 10], have=[4, 4, 4], spend=60, cap=32)
[0, 1, 5]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

_NORMAL = statistics.NormalDist()


def expected_max(n: int) -> float:
    """E[max of n standard normal draws] (Blom's approximation; 0 for one draw)."""
    return 0.0 if n <= 1 else _NORMAL.inv_cdf((n - 0.375) / (n + 0.25))


def expected_max_gain(sigma: float, n: int) -> float:
    """What the (n + 1)-th sample is expected to add to the best of n, for rewards spread by ``sigma``."""
    return sigma * (expected_max(n + 1) - expected_max(n))


def allocate(
    sigmas: Sequence[float],
    costs: Sequence[float],
    have: Sequence[int],
    spend: float,
    cap: int,
    overheads: Sequence[float] | None = None,
) -> list[int]:
    """Extra samples per prompt: greedily, the next sample goes to the prompt with the most expected gain per
    engine token, while the budget ``spend`` (engine tokens) allows and no prompt passes ``cap`` samples in all.
    A prompt's first extra sample also pays its ``overheads`` (the prompt tokens its extra call reads again)."""
    extra = [0] * len(sigmas)
    overheads = overheads or [0.0] * len(sigmas)
    left = spend
    while True:
        best, best_rate, best_cost = None, 0.0, 0.0
        for i, (sigma, cost) in enumerate(zip(sigmas, costs)):
            n = have[i] + extra[i]
            price = cost + (overheads[i] if not extra[i] else 0.0)
            if n >= cap or price > left:
                continue
            rate = expected_max_gain(sigma, n) / max(price, 1.0)
            if rate > best_rate:
                best, best_rate, best_cost = i, rate, price
        if best is None:
            return extra
        extra[best] += 1
        left -= best_cost
