"""The report of an evaluation: ``summary.json``, PNG plots (matplotlib) and one self-contained ``report.html``.

The HTML page references nothing outside itself: the plots are embedded as data URIs and the table sorts by a
few lines of inline JavaScript, so it opens offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from .stats import kl_bound

PLOTS = ("frontier.png", "win_rate_vs_n.png", "kl_vs_n.png", "win_rate_vs_kl.png")


def machine() -> dict[str, Any]:
    """What this evaluation ran on (the client's machine; the server reports its own versions)."""
    memory = None
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory": memory,
        "processor": platform.processor() or platform.machine(),
    }


def _fmt(stat: dict[str, Any] | None, digits: int = 3) -> tuple[str, float | None]:
    """``"mean [lo, hi]"`` and the sort key of a ``mean_ci`` dict."""
    if not stat or stat.get("mean") is None:
        return "n/a", None
    mean = stat["mean"]
    if stat.get("ci") and stat["n"] > 1:
        lo, hi = stat["ci"]
        return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]", mean
    return f"{mean:.{digits}f}", mean


def _kl_text(kl: dict[str, Any]) -> tuple[str, float | None]:
    if kl.get("value") is not None:
        return f"{kl['value']:.3f} ({kl['estimator']}; bound {kl['bound']:.3f})", kl["value"]
    if kl.get("bound") is not None:
        return f"≤ {kl['bound']:.3f} (bound)", kl["bound"]
    return "n/a", None


def table(summary: dict[str, Any]) -> tuple[list[str], list[list[tuple[str, Any]]]]:
    """Column names and rows of ``(text, sort key)`` cells."""
    rows = summary["rows"]
    held_out = sorted({name for row in rows for name in row["eval_rewards"]})
    columns = ["configuration", "decoder", "prompts", "errors", "reward (optimised)"]
    columns += [f"{name} (held out)" for name in held_out]
    columns += ["win rate vs model", *[f"win rate: {n}" for n in held_out], "KL to model", "calibrated"]
    columns += ["engine tokens", "prompt tok", "cached tok", "completion tok", "engine calls", "reward calls"]
    columns += ["wall s", "TTFT s", "accuracy", "distinct-2"]
    out = []
    for row in rows:
        cells: list[tuple[str, Any]] = [
            (row["config"], row["config"]),
            (row["decoder"], row["decoder"]),
            (str(row["prompts"]), row["prompts"]),
            (str(row["errors"]), row["errors"]),
            _fmt(row["reward"]),
        ]
        cells += [_fmt(row["eval_rewards"].get(name)) for name in held_out]
        cells += [_fmt(row["win_rate"]), *[_fmt(row["eval_win_rates"].get(n)) for n in held_out], _kl_text(row["kl"])]
        cells.append(_fmt(row.get("calibrated")))
        for key in ("engine_tokens", "engine_prompt_tokens", "engine_cached_tokens", "engine_completion_tokens"):
            cells.append(_fmt(row[key], 0))
        cells += [_fmt(row["engine_calls"], 1), _fmt(row["reward_calls"], 1)]
        cells += [_fmt(row["wall_s"], 2), _fmt(row["ttft_s"], 2), _fmt(row["accuracy"]), _fmt(row["distinct_2"])]
        out.append(cells)
    return columns, out


def plot(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """The four plots: the compute/quality frontier, best-of-N win rate and KL against N with their theory, and
    win rate against KL (the soft best-of-N curve across ``beta``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    paths = []
    held_out = sorted({name for row in rows for name in row["eval_rewards"]})
    optimised = summary.get("optimised_reward") or "reward"
    panels = [("reward", f"{optimised} (optimised)")] + [(name, f"{name} (held out)") for name in held_out]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for row in rows:
            stat = row["reward"] if key == "reward" else row["eval_rewards"].get(key)
            x = row["engine_tokens"]["mean"]
            if not stat or stat.get("mean") is None or x is None:
                continue
            y = stat["mean"]
            err = None
            if stat.get("ci") and stat["n"] > 1:
                err = [[y - stat["ci"][0]], [stat["ci"][1] - y]]
            ax.errorbar([x], [y], yerr=err, fmt="o", capsize=3)
            ax.annotate(row["config"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("engine tokens per prompt (prompt + completion, log scale)")
        ax.set_ylabel(f"mean {title} (95% bootstrap CI)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle("Compute/quality frontier: one point per configuration")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "frontier.png", plt))

    bon = sorted(
        (
            r
            for r in rows
            if r["decoder"] == "best_of_n"
            and "num_candidates" in r["decoder_params"]
            and r["decoder_params"].get("beta") is None  # soft best-of-N: on the win-rate-vs-KL plot
        ),
        key=lambda r: r["decoder_params"]["num_candidates"],
    )
    n_max = max([r["decoder_params"]["num_candidates"] for r in bon] + [16])
    grid = [1 + i * (n_max - 1) / 200 for i in range(201)]

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.plot(grid, [n / (n + 1) for n in grid], "--", color="gray", label="N/(N+1) (continuous reward)")
    points = [(r["decoder_params"]["num_candidates"], r["win_rate"]) for r in bon if r["win_rate"]["mean"] is not None]
    if points:
        xs = [n for n, _ in points]
        ys = [s["mean"] for _, s in points]
        errs = [[s["mean"] - s["ci"][0] for _, s in points], [s["ci"][1] - s["mean"] for _, s in points]]
        ax.errorbar(xs, ys, yerr=errs, fmt="o-", capsize=3, label=f"measured ({optimised}, ties half)")
    else:
        ax.text(0.5, 0.2, "no best_of_n sweep in this evaluation", transform=ax.transAxes, ha="center")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (candidates)")
    ax.set_ylabel("win rate against a fresh model sample")
    ax.set_title("best-of-N win rate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "win_rate_vs_n.png", plt))

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.plot(grid, [kl_bound(n) for n in grid], "--", color="gray", label="log N - (N-1)/N (bound)")
    measured = [(r["decoder_params"]["num_candidates"], r["kl"]) for r in bon if r["kl"].get("value") is not None]
    if measured:
        ax.plot([n for n, _ in measured], [k["value"] for _, k in measured], "o-", label=measured[0][1]["estimator"])
    else:
        ax.text(0.5, 0.8, "no empirical estimate (set kl_references)", transform=ax.transAxes, ha="center")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (candidates)")
    ax.set_ylabel("KL(best-of-N || model), nats")
    ax.set_title("best-of-N KL to the model")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "kl_vs_n.png", plt))
    paths.append(_win_rate_vs_kl(rows, optimised, plt, out_dir))
    return paths


def _win_rate_vs_kl(rows: list[dict[str, Any]], optimised: str, plt: Any, out_dir: Path) -> Path:
    """Win rate against KL from the model, a point per configuration with a KL value (its estimate, else its
    bound, drawn hollow); the rows of one family (a ``beta`` sweep) joined in order of KL."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    families: dict[str, list[tuple[float, float, bool]]] = {}
    for row in rows:
        kl, win = row["kl"], row["win_rate"]["mean"]
        x = kl.get("value") if kl.get("value") is not None else kl.get("bound")
        if x is None or win is None:
            continue
        families.setdefault(row.get("family") or row["config"], []).append((x, win, kl.get("value") is not None))
        ax.annotate(row["config"], (x, win), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for family, points in families.items():
        points.sort()
        line = ax.plot([p[0] for p in points], [p[1] for p in points], "-", alpha=0.5)[0]
        for x, y, estimated in points:
            ax.plot([x], [y], "o", color=line.get_color(), fillstyle="full" if estimated else "none")
        line.set_label(family)
    if not families:
        ax.text(0.5, 0.5, "no configuration with a KL (set kl_references)", transform=ax.transAxes, ha="center")
    ax.set_xlabel("KL(policy || model), nats (hollow: bound)")
    ax.set_ylabel(f"win rate against a fresh model sample ({optimised})")
    ax.set_title("win rate against KL")
    ax.grid(alpha=0.3)
    if families:
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir / "win_rate_vs_kl.png", plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const asc = th.dataset.order !== 'asc';
  th.closest('tr').querySelectorAll('th').forEach(h => delete h.dataset.order);
  th.dataset.order = asc ? 'asc' : 'desc';
  const key = r => { const v = r.cells[col].dataset.sort; const n = parseFloat(v); return isNaN(n) ? v : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    if (x === y) return 0; if (x === '') return 1; if (y === '') return -1;
    return (x < y ? -1 : 1) * (asc ? 1 : -1); }).forEach(r => body.appendChild(r));
}));
"""

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222} table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 6px;text-align:right} td:first-child,th:first-child{text-align:left}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0} th[data-order=asc]::after{content:' ▲'}
th[data-order=desc]::after{content:' ▼'} img{max-width:100%;margin:1em 0} pre{background:#f7f7f7;padding:1em}
.note{color:#555;font-size:13px;max-width:70em}
"""


def write_html(summary: dict[str, Any], meta: dict[str, Any], out_dir: Path) -> Path:
    """``report.html``: the sortable table, the embedded plots, the configuration and where it ran."""
    columns, rows = table(summary)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for cells in rows:
        tds = []
        for text, key in cells:
            sort = "" if key is None or (isinstance(key, float) and math.isnan(key)) else key
            tds.append(f'<td data-sort="{html.escape(str(sort))}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    images = []
    for name in PLOTS:
        path = out_dir / name
        if path.exists():
            data = base64.b64encode(path.read_bytes()).decode()
            images.append(f'<img alt="{name}" src="data:image/png;base64,{data}">')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alignd eval: {html.escape(meta.get("name", ""))}</title>
<style>{_CSS}</style></head><body>
<h1>alignd eval</h1>
<p class="note">{len(summary["rows"])} configurations over {summary["baseline_prompts"]} prompts. Intervals are 95%
percentile bootstrap intervals over prompts ({summary["bootstrap_samples"]} resamples). Win rates are against a
fresh sample of the model at temperature 1 for the same prompt, ties counted half (N/(N+1) is then an upper bound).
KL: "exact" (the model itself), "bound" (best-of-N's log N - (N-1)/N), "plug-in (K refs)" (best-of-N's
log N + (N-1) E[log F], F the reward's CDF under the model estimated from K samples), "n/a" where no honest
estimate exists. Engine tokens count everything a request cost: candidates, lookaheads, references and the
engine work of rewards such as the judge. Click a column header to sort.</p>
<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
{"".join(images)}
<h2>Configuration</h2><pre>{html.escape(meta.get("config_text", ""))}</pre>
<h2>Where it ran</h2><pre>{
        html.escape(
            json.dumps({k: meta[k] for k in ("server", "machine", "started", "finished") if k in meta}, indent=2)
        )
    }</pre>
<script>{_SORT_JS}</script>
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path
