"""How confident a sampled trace is, from its own top-k log-probs (DeepConf: Fu, Wang, Tian and Zhao 2025, "Deep
Think with Confidence", arXiv 2508.15260).

Token confidence C_t = -(1/k) sum_{j<=k} log p_t(j) over the k most likely tokens at position t: large when the
model puts its mass on few tokens (the rest of the top k are then very unlikely). A group confidence is the mean
C_t over a sliding window of ``window`` tokens; a trace's confidence is its lowest group confidence
(``lowest_group``: one confused stretch marks the trace) or the mean of its lowest 10% of groups (``bottom_10``).

>>> token_confidence({1: math.log(0.9), 2: math.log(0.05), 3: math.log(0.05)}, 3) > token_confidence(
...     {1: math.log(0.4), 2: math.log(0.3), 3: math.log(0.3)}, 3)
True
>>> group_confidences([1.0, 2.0, 3.0, 4.0], window=2)
[1.5, 2.5, 3.5]
>>> trace_confidence([5.0, 5.0, 1.0, 5.0], window=2, mode="lowest_group")
3.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

TraceMode = Literal["lowest_group", "bottom_10"]


def token_confidence(row: dict[int, float] | None, k: int) -> float:
    """C_t from one position's top log-probs (the ``k`` most likely; 0 when the engine returned none)."""
    if not row:
        return 0.0
    top = sorted(row.values(), reverse=True)[:k]
    return -sum(max(v, -1e4) for v in top) / len(top)


def group_confidences(values: Sequence[float], window: int) -> list[float]:
    """The mean of every ``window`` consecutive token confidences (one group if the trace is shorter)."""
    if not values:
        return []
    if len(values) <= window:
        return [sum(values) / len(values)]
    total = sum(values[:window])
    out = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        out.append(total / window)
    return out


def trace_confidence(values: Sequence[float], window: int, mode: TraceMode = "lowest_group") -> float:
    """A trace's confidence from its token confidences; 0 for an empty trace."""
    groups = group_confidences(values, window)
    if not groups:
        return 0.0
    if mode == "lowest_group":
        return min(groups)
    lowest = sorted(groups)[: max(1, math.ceil(len(groups) / 10))]
    return sum(lowest) / len(lowest)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
