"""The numbers of an evaluation, computed from ``results.jsonl`` alone (so a test can recompute them).

Confidence intervals are percentile bootstrap intervals over prompts: the prompts are resampled with replacement
``B`` times (2,000, fixed seed) and the 2.5th and 97.5th percentiles of the statistic are reported. Win rates
count ties as half a win. The KL column says which estimator produced it:

* ``exact``: ``sample`` at temperature 1 with no truncation is the model itself, KL = 0;
* ``bound``: best-of-N's analytic KL(best-of-N || model) <= log N - (N-1)/N (Beirami et al. 2024), exact for a
  continuous reward;
* ``plug-in (K refs)``: best-of-N's density ratio is N * F(r(y))^(N-1) for the reward's CDF F under the model,
  so KL = log N + (N-1) E[log F(r(y*))]; F is estimated per prompt from K reference samples of the model (ties
  half, clipped to 1/(2K)). With F exact this is unbiased; with few references it leans high.
* soft best-of-N (``best_of_n`` with ``beta``, Verdun et al. 2025) picks candidate i of N with probability
  softmax(r_i / beta), so its density ratio at an answer of reward r is
  N * E[exp(r/beta) / (exp(r/beta) + sum_{j<N} exp(r_j/beta))] over N - 1 other draws r_j of the model's reward;
  the plug-in takes the r_j from the K references (every combination when there are few, else 4,096 seeded draws)
  and averages log of that ratio over prompts. beta -> 0 gives best-of-N's plug-in, beta -> inf gives 0; its
  bound is log N (no policy that returns one of N draws is further from the model).

Anything else (greedy searches, beams, prompting) has no KL to the model that can be computed honestly: "n/a".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..rewards.scoring import calibrate

BOOTSTRAP_SAMPLES = 2000
BASELINE = "__baseline__"
REFERENCES = "__references__"


def bootstrap_ci(values: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values`` (resampled with replacement).

    >>> lo, hi = bootstrap_ci([1.0] * 10)
    >>> (lo, hi)
    (1.0, 1.0)
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """``{mean, ci: [lo, hi], se, n}`` of ``values`` (``se``: the standard error of the mean)."""
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not data:
        return {"mean": None, "ci": None, "se": None, "n": 0}
    arr = np.asarray(data)
    se = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else None
    return {"mean": float(arr.mean()), "ci": list(bootstrap_ci(data)), "se": se, "n": int(arr.size)}


def win(a: float | None, b: float | None) -> float | None:
    """1 if ``a`` beats ``b``, 0.5 for a tie, 0 if it loses; ``None`` when either is missing."""
    if a is None or b is None:
        return None
    return 1.0 if a > b else (0.5 if a == b else 0.0)


def calibrated(rewards: dict[str, float | None] | None, references: dict[str, list[float | None]]) -> float | None:
    """CTRL's calibrated reward of an answer, against the evaluation's own reference samples of the model (not a
    decoder's): per reward term, the share of references it beats (ties half), averaged over the terms.

    >>> calibrated({"judge": 2.0, "length": 10.0}, {"judge": [1.0, 3.0], "length": [10.0, 12.0]})
    0.375
    """
    shares = [
        calibrate(rewards[name], sorted(refs))
        for name, values in references.items()
        if (refs := [v for v in values if v is not None]) and (rewards or {}).get(name) is not None
    ]
    return sum(shares) / len(shares) if shares else None


def kl_bound(n: int) -> float:
    """Best-of-N's analytic KL bound log N - (N-1)/N.

    >>> kl_bound(1), round(kl_bound(4), 4)
    (0.0, 0.6363)
    """
    return math.log(n) - (n - 1) / n


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct n-grams over all ``texts``: unique word n-grams / all word n-grams (higher: more diverse).

    >>> distinct_n(["a b c", "a b d"])
    0.75
    """
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def summarize(records: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], kl_references: int) -> dict[str, Any]:
    """Per configuration (in ``runs`` order): rewards, win rates, KL, cost and latency, with intervals."""
    baselines = {r["prompt_id"]: r for r in records if r["config"] == BASELINE and not r.get("error")}
    references = {r["prompt_id"]: r for r in records if r["config"] == REFERENCES and not r.get("error")}
    rows = []
    for run in runs:
        mine = [r for r in records if r["config"] == run["label"]]
        ok = [r for r in mine if not r.get("error")]
        row: dict[str, Any] = {
            "config": run["label"],
            "family": run["family"],
            "decoder": run["decoder"]["name"],
            "decoder_params": run["decoder"],
            "sweep": run.get("sweep", {}),
            "prompts": len(ok),
            "errors": len(mine) - len(ok),
            "reward": mean_ci([r["reward"] for r in ok]),
        }
        names = sorted({name for r in ok for name in (r.get("eval_rewards") or {})})
        row["eval_rewards"] = {name: mean_ci([(r["eval_rewards"] or {}).get(name) for r in ok]) for name in names}
        paired = [(r, baselines[r["prompt_id"]]) for r in ok if r["prompt_id"] in baselines]
        row["win_rate"] = mean_ci([w for r, b in paired if (w := win(r["reward"], b["reward"])) is not None])
        row["ties"] = sum(1 for r, b in paired if r["reward"] is not None and r["reward"] == b["reward"])
        row["eval_win_rates"] = {
            name: mean_ci(
                [
                    w
                    for r, b in paired
                    if (w := win((r["eval_rewards"] or {}).get(name), (b["eval_rewards"] or {}).get(name))) is not None
                ]
            )
            for name in names
        }
        row["kl"] = kl_estimate(run, ok, references, kl_references)
        shares = [
            c
            for r in ok
            if (c := calibrated(r.get("rewards"), (references.get(r["prompt_id"]) or {}).get("reference_terms") or {}))
            is not None
        ]
        row["calibrated"] = mean_ci(shares) if shares else None
        usage = [r["usage"] for r in ok]
        for key in ("engine_prompt_tokens", "engine_cached_tokens", "engine_completion_tokens", "engine_calls"):
            row[key] = mean_ci([u.get(key, 0) for u in usage])
        row["reward_calls"] = mean_ci([u.get("reward_calls", 0) for u in usage])
        row["engine_tokens"] = mean_ci(
            [u.get("engine_prompt_tokens", 0) + u.get("engine_completion_tokens", 0) for u in usage]
        )
        row["wall_s"] = mean_ci([r["wall_s"] for r in ok])
        row["ttft_s"] = mean_ci([r["ttft_s"] for r in ok if r.get("ttft_s") is not None])
        graded = [r for r in ok if r.get("correct") is not None]
        row["accuracy"] = mean_ci([float(r["correct"]) for r in graded]) if graded else None
        diverse = [r["distinct_2"] for r in ok if r.get("distinct_2") is not None]
        row["distinct_2"] = mean_ci(diverse) if diverse else None
        rows.append(row)
    return {"rows": rows, "baseline_prompts": len(baselines), "bootstrap_samples": BOOTSTRAP_SAMPLES}


def kl_estimate(
    run: dict[str, Any], ok: Sequence[dict[str, Any]], references: dict[str, dict[str, Any]], k: int
) -> dict[str, Any]:
    """KL(configuration || model) for a row, with the estimator that produced it (see the module's docstring):
    ``value`` (None where none can be computed honestly), its ``ci``, ``estimator`` and the analytic ``bound``."""
    decoder = run["decoder"]
    name = decoder["name"]
    request = run.get("request_resolved", {})
    untempered = request.get("temperature", 1.0) == 1.0 and request.get("top_p", 1.0) == 1.0
    untruncated = request.get("top_k") in (None, -1, 0) and not request.get("min_p")
    if name == "sample" and untempered and untruncated:
        return {"value": 0.0, "estimator": "exact", "bound": 0.0}
    if name == "best_of_n" and untempered and untruncated and decoder.get("beta") is not None:
        return _soft_kl(decoder, ok, references, k)
    if name == "best_of_n" and untempered and untruncated:
        n = int(decoder.get("num_candidates", 4))
        out: dict[str, Any] = {"value": None, "estimator": "bound", "bound": kl_bound(n)}
        per_prompt = []
        for r in ok:
            refs = (references.get(r["prompt_id"]) or {}).get("reference_rewards") or []
            refs = sorted(v for v in refs if v is not None)
            if refs and r["reward"] is not None:
                f = max(calibrate(r["reward"], refs), 1 / (2 * len(refs)))
                per_prompt.append(math.log(n) + (n - 1) * math.log(f))
        if per_prompt:
            out["value"] = mean_ci(per_prompt)["mean"]
            out["ci"] = mean_ci(per_prompt)["ci"]
            out["estimator"] = f"plug-in ({k} refs)"
        return out
    return {"value": None, "estimator": "n/a", "bound": None}


def soft_ratio(reward: float, refs: Sequence[float], n: int, beta: float, *, draws: int = 4096, seed: int = 0) -> float:
    """Soft best-of-N's density ratio to the model at an answer of reward ``reward``, the other N - 1 draws taken
    from the reference rewards ``refs`` (exactly, over every combination, when there are at most ``draws``).

    >>> round(soft_ratio(1.0, [0.0, 1.0], 2, 1.0), 4)  # 2 * (e / (e + 1) + 1 / 2) / 2
    1.2311
    >>> round(soft_ratio(1.0, [0.0, 1.0], 2, 1e-6), 4), round(soft_ratio(1.0, [0.0, 1.0], 2, 1e6), 4)
    (1.5, 1.0)
    """
    if n <= 1 or not refs:
        return 1.0
    scaled = np.asarray(refs, dtype=float) / beta
    mine = reward / beta
    if len(refs) ** (n - 1) <= draws:
        others = np.array(np.meshgrid(*[scaled] * (n - 1), indexing="ij")).reshape(n - 1, -1).T
    else:
        others = np.random.default_rng(seed).choice(scaled, size=(draws, n - 1), replace=True)
    everyone = np.concatenate([np.full((len(others), 1), mine), others], axis=1)
    top = everyone.max(axis=1, keepdims=True)
    share = np.exp(mine - top[:, 0]) / np.exp(everyone - top).sum(axis=1)
    return float(n * share.mean())


def _soft_kl(
    decoder: dict[str, Any], ok: Sequence[dict[str, Any]], references: dict[str, dict[str, Any]], k: int
) -> dict[str, Any]:
    n, beta = int(decoder.get("num_candidates", 4)), float(decoder["beta"])
    out: dict[str, Any] = {"value": None, "estimator": "bound", "bound": math.log(n)}
    per_prompt = []
    for r in ok:
        refs = [v for v in (references.get(r["prompt_id"]) or {}).get("reference_rewards") or [] if v is not None]
        if refs and r["reward"] is not None:
            per_prompt.append(math.log(soft_ratio(r["reward"], refs, n, beta)))
    if per_prompt:
        stat = mean_ci(per_prompt)
        out.update(value=stat["mean"], ci=stat["ci"], estimator=f"plug-in, soft ({k} refs)")
    return out
