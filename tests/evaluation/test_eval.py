"""``alignd eval``: the statistics on hand-made samples, and the whole pipeline against the real server on the
tiny model (every output file, numbers recomputed from results.jsonl, resume, Ctrl-C, bad input, metrics)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignd.answers import last_number
from alignd.decoders.protocol import decoder_registry
from alignd.evaluation.config import EvalInputError, load_config, load_prompts
from alignd.evaluation.stats import bootstrap_ci, distinct_n, kl_bound, kl_estimate, mean_ci, soft_ratio, win
from alignd.rewards.scoring import calibrate

from serverproc import API_KEY, metric

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "examples" / "eval").glob("*.yaml"))

PROMPTS = [
    {"id": "a", "prompt": "Say hello."},
    {"id": "b", "prompt": "Name a color.", "keywords": ["red"]},
    {"id": "c", "prompt": "What is 2 + 2?", "answer": "4"},
    {"id": "d", "messages": [{"role": "user", "content": "Tell me about the sea."}]},
]


# ---- statistics, by hand -------------------------------------------------------------------------------------


def test_bootstrap_interval_matches_the_normal_interval_for_a_known_sample():
    # 100 fair coin flips, half ones: mean 0.5, standard error sqrt(0.25 / 100) = 0.05, so the 95% interval is
    # about 0.5 +- 1.96 * 0.05. The bootstrap's endpoints are quantiles of 2,000 resamples: their Monte-Carlo
    # error is about 0.05 * 0.1, so 0.01 is a tolerance of two such errors.
    values = [0.0, 1.0] * 50
    lo, hi = bootstrap_ci(values)
    assert lo == pytest.approx(0.5 - 1.96 * 0.05, abs=0.01) and hi == pytest.approx(0.5 + 1.96 * 0.05, abs=0.01)
    assert bootstrap_ci(values) == (lo, hi)  # fixed seed: reproducible
    stat = mean_ci(values)
    assert stat["mean"] == 0.5 and stat["n"] == 100 and stat["se"] == pytest.approx(0.05025, abs=1e-4)
    assert mean_ci([None, float("nan")])["mean"] is None


def test_win_rates_calibration_kl_and_text_metrics_by_hand():
    assert [win(2, 1), win(1, 1), win(0, 1), win(None, 1)] == [1.0, 0.5, 0.0, None]
    assert calibrate(2.0, [1.0, 2.0, 3.0, 4.0]) == 0.375
    assert kl_bound(1) == 0.0 and kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)
    assert distinct_n(["a b a b", "a b"]) == pytest.approx(2 / 4)
    assert last_number("2 + 2 = 4.") == "4" and last_number("It costs 1,200 dollars") == "1200"


def test_soft_best_of_n_kl_by_hand_and_at_its_limits():
    # N = 2, the model's reward 0 or 1 with probability 1/2, beta = 1: an answer of reward 1 is picked against
    # another draw with probability e/(e+1) (the other scored 0) or 1/2 (it scored 1), so its density ratio is
    # 2 * (e/(e+1) + 1/2) / 2; one of reward 0: 2 * (1/2 + 1/(1+e)) / 2.
    e = math.e
    assert soft_ratio(1.0, [0.0, 1.0], 2, 1.0) == pytest.approx(e / (e + 1) + 0.5)
    assert soft_ratio(0.0, [0.0, 1.0], 2, 1.0) == pytest.approx(0.5 + 1 / (1 + e))
    # beta -> 0 is best-of-N's ratio N F^(N-1) (ties half), beta -> inf is the model itself
    refs = [0.1, 0.3, 0.5, 0.7, 0.9]
    for reward in (0.3, 0.7):
        assert soft_ratio(reward, refs, 3, 1e-9) == pytest.approx(3 * calibrate(reward, refs) ** 2, rel=0.1)
        assert soft_ratio(reward, refs, 3, 1e9) == pytest.approx(1.0)
    # with 16 references and N = 8 the expectation is drawn (4,096 seeded draws), within 3% of an exact mean
    many = [i / 15 for i in range(16)]
    assert soft_ratio(0.8, many, 8, 0.1) == pytest.approx(soft_ratio(0.8, many, 8, 0.1, draws=200_000), rel=0.03)
    run = {"decoder": {"name": "best_of_n", "num_candidates": 2, "beta": 1.0}, "request_resolved": {}}
    kl = kl_estimate(run, [{"prompt_id": "p", "reward": 1.0}], {"p": {"reference_rewards": [0.0, 1.0]}}, 2)
    assert kl["value"] == pytest.approx(math.log(e / (e + 1) + 0.5)) and kl["bound"] == pytest.approx(math.log(2))


# ---- the pipeline on the real server -------------------------------------------------------------------------


def _write(tmp: Path, configs: list[dict], prompts: list[dict] = PROMPTS, **extra) -> Path:
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    config = {
        "prompts": "prompts.jsonl",
        "request": {"max_tokens": 8, "seed": 0},
        "reward": "length",
        "eval_rewards": ["rm", "keywords"],
        "kl_references": 4,
        "concurrency": 2,
        "configs": configs,
        **extra,
    }
    path = tmp / "eval.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _run(server, config: Path, out: Path, *args: str, api_key: str = API_KEY, **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "alignd.server.cli", "eval", str(config), "--out", str(out), "--url", server.url]
    return subprocess.run([*command, "--api-key", api_key, *args], capture_output=True, text=True, timeout=600, **popen)


# The child takes Ctrl-C by default even when this suite runs as a background job, whose shell starts it with
# SIGINT ignored (a disposition children inherit, and Python then installs no KeyboardInterrupt handler).
INTERRUPTIBLE = {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}

CONFIGS = [
    {"name": "sample", "decoder": "sample"},
    {"name": "best_of_n", "decoder": "best_of_n", "sweep": {"num_candidates": [1, 3]}},
]


def test_eval_writes_every_file_and_its_numbers_follow_from_the_results(server, tmp_path):
    out = tmp_path / "out"
    done = _run(server, _write(tmp_path, CONFIGS), out)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} >= {
        "results.jsonl",
        "summary.json",
        "report.html",
        "frontier.png",
        "win_rate_vs_n.png",
        "kl_vs_n.png",
    }
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    labels = {"sample", "best_of_n num_candidates=1", "best_of_n num_candidates=3", "__baseline__", "__references__"}
    assert {r["config"] for r in records} == labels and not any(r.get("error") for r in records)
    assert len(records) == 4 * len(labels)
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["config"]: row for row in summary["rows"]}
    assert list(rows) == ["sample", "best_of_n num_candidates=1", "best_of_n num_candidates=3"]
    baseline = {r["prompt_id"]: r for r in records if r["config"] == "__baseline__"}
    references = {r["prompt_id"]: r["reference_terms"] for r in records if r["config"] == "__references__"}
    assert all(len(refs["length"]) == 4 for refs in references.values())
    for label, row in rows.items():
        mine = [r for r in records if r["config"] == label]
        assert row["prompts"] == 4
        assert row["reward"]["mean"] == pytest.approx(sum(r["reward"] for r in mine) / 4)
        assert all(r["reward"] == len(r["text"]) for r in mine)  # the tiny server's length reward counts characters
        wins = [
            1.0 if r["reward"] > b["reward"] else 0.5 if r["reward"] == b["reward"] else 0.0
            for r in mine
            for b in [baseline[r["prompt_id"]]]
        ]
        assert row["win_rate"]["mean"] == pytest.approx(sum(wins) / 4)
        # the calibrated reward: the share of the model's 4 reference answers each answer beats, ties half
        shares = [
            (sum(v < r["rewards"]["length"] for v in refs) + 0.5 * sum(v == r["rewards"]["length"] for v in refs)) / 4
            for r in mine
            for refs in [references[r["prompt_id"]]["length"]]
        ]
        assert row["calibrated"]["mean"] == pytest.approx(sum(shares) / 4)
        rm = [r["eval_rewards"]["rm"] for r in mine]
        assert row["eval_rewards"]["rm"]["mean"] == pytest.approx(sum(rm) / 4)
        tokens = [r["usage"]["engine_prompt_tokens"] + r["usage"]["engine_completion_tokens"] for r in mine]
        assert row["engine_tokens"]["mean"] == pytest.approx(sum(tokens) / 4)
        assert row["accuracy"]["n"] == 1  # one prompt carries an answer
    assert rows["sample"]["kl"] == {"value": 0.0, "estimator": "exact", "bound": 0.0}
    kl3 = rows["best_of_n num_candidates=3"]["kl"]
    assert kl3["bound"] == pytest.approx(math.log(3) - 2 / 3) and kl3["estimator"] == "plug-in (4 refs)"
    for name in ("frontier.png", "win_rate_vs_n.png", "kl_vs_n.png"):
        import matplotlib.image

        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 300
    html = (out / "report.html").read_text()
    assert "http://" not in html.replace(server.url, "") and "https://" not in html
    assert 'src="data:image/png;base64,' in html and "<script src" not in html and "<link" not in html
    assert html.count("<tr>") == 1 + 3  # header and one row per configuration
    # the alignment metrics saw these requests
    assert metric(server, "alignd_chosen_reward_count", decoder="best_of_n", reward="length") >= 8
    assert metric(server, "alignd_chosen_reward_margin_count", decoder="best_of_n", reward="length") >= 8
    assert metric(server, "alignd_candidates_per_request_sum", decoder="best_of_n") >= 4 * (1 + 3)
    assert metric(server, "alignd_engine_tokens_per_request_count", decoder="sample") >= 4


def test_shared_budgets_send_prompts_together_and_record_what_each_got(server, tmp_path):
    configs = [
        {
            "name": "allocated",
            "decoder": {"name": "best_of_n", "num_candidates": 4, "allocate": True, "pilot": 2},
            "together": 4,
            "request": {"budget": {"max_engine_tokens": 400}},
        }
    ]
    out = tmp_path / "out"
    done = _run(server, _write(tmp_path, configs, kl_references=0), out)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mine = [r for r in records if r["config"] == "allocated"]
    assert sorted(r["prompt_id"] for r in mine) == ["a", "b", "c", "d"] and not any(r.get("error") for r in mine)
    for r in mine:  # each prompt's share: its pilot, what the allocation gave it, the tokens of its own candidates
        info = r["info"]
        assert info["prompts_in_request"] == 4 and info["samples"] == info["pilot"] + info["allocated"]
        assert len(r["candidates"]) == info["samples"] and r["reward"] == max(c["reward"] for c in r["candidates"])
        assert r["usage"]["engine_completion_tokens"] == sum(c["num_tokens"] for c in r["candidates"])
    # one budget for the four: what they drew together stays within it
    assert sum(r["usage"]["engine_completion_tokens"] for r in mine) <= 400
    rows = {row["config"]: row for row in json.loads((out / "summary.json").read_text())["rows"]}
    assert rows["allocated"]["prompts"] == 4


def test_eval_resumes_and_ctrl_c_leaves_a_consistent_partial_report(server, tmp_path):
    out = tmp_path / "out"
    config = _write(tmp_path, CONFIGS, kl_references=0)
    first = _run(server, config, out, "--limit", "2")
    assert first.returncode == 0, first.stderr
    assert "8 requests" in first.stderr  # 2 prompts x (the baseline + 3 configurations)
    second = _run(server, config, out)
    assert second.returncode == 0 and "8 requests" in second.stderr  # only the two new prompts
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 4 and len({(json.loads(x)["prompt_id"], json.loads(x)["config"]) for x in lines}) == 16
    # Ctrl-C partway through a slow run: exit 130, every line whole, a report of what finished
    slow_out = tmp_path / "slow"
    slow = _write(
        tmp_path,
        [{"name": "deal", "decoder": {"name": "deal", "top_k": 4, "lookahead": 8}, "request": {"max_tokens": 60}}],
        prompts=[{"id": f"p{i}", "prompt": f"Count to {i}."} for i in range(12)],
        kl_references=0,
        concurrency=1,
    )
    command = [sys.executable, "-m", "alignd.server.cli", "eval", str(slow), "--out", str(slow_out)]
    proc = subprocess.Popen(
        [*command, "--url", server.url, "--api-key", API_KEY], stderr=subprocess.PIPE, text=True, **INTERRUPTIBLE
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(
        json.loads(x)["config"] == "deal" for x in _lines(slow_out / "results.jsonl")
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130 and "interrupted" in proc.stderr.read()
    partial = [json.loads(x) for x in _lines(slow_out / "results.jsonl")]
    assert 1 <= sum(r["config"] == "deal" for r in partial) < 12
    summary = json.loads((slow_out / "summary.json").read_text())
    assert summary["rows"][0]["prompts"] == sum(r["config"] == "deal" and not r.get("error") for r in partial)
    assert (slow_out / "report.html").exists()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize(
    "case, message",
    [
        ("bad-jsonl", "prompts.jsonl:2: not valid JSON"),
        ("missing-prompt-field", "prompts.jsonl:1: give exactly one of prompt or messages"),
        ("no-prompt-file", "the prompt file"),
        ("unknown-decoder", "unknown decoder(s) ['nope']"),
        ("unknown-reward", "reward(s) ['nope'] are not declared"),
        ("wrong-key", "refused the API key"),
        ("skip-all", "prompts.jsonl holds no prompts past the first 4"),
    ],
)
def test_bad_input_is_one_clear_message_and_a_non_zero_exit(server, tmp_path, case, message):
    configs = [{"name": "x", "decoder": "nope" if case == "unknown-decoder" else "sample"}]
    config = _write(tmp_path, configs, reward="nope" if case == "unknown-reward" else "length")
    prompts = tmp_path / "prompts.jsonl"
    if case == "bad-jsonl":
        prompts.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    elif case == "missing-prompt-field":
        prompts.write_text('{"id": "x"}\n')
    elif case == "no-prompt-file":
        prompts.unlink()
    skip = ["--skip", "4"] if case == "skip-all" else []
    done = _run(server, config, tmp_path / "out", *skip, api_key="wrong" if case == "wrong-key" else API_KEY)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_skip_and_limit_choose_prompts_after_the_tag_filter(tmp_path):
    # settings chosen on the first N prompts are checked on the rest: skip N, then at most limit
    prompts = [{"id": f"p{i}", "prompt": f"Q{i}", "tags": ["odd" if i % 2 else "even"]} for i in range(8)]
    path = _write(tmp_path, [{"name": "s", "decoder": "sample"}], prompts, tags=["even"], skip=1, limit=2)
    config = load_config(path)
    assert [p.id for p in config.prompt_set()] == ["p2", "p4"]
    config = load_config(path, {"skip": 3, "limit": None})  # the command line's --skip wins; no --limit: the file's
    assert [p.id for p in config.prompt_set()] == ["p6"]
    with pytest.raises(EvalInputError, match=r"holds no prompts tagged \['even'\] past the first 4"):
        load_prompts(config.prompts, None, ["even"], 4)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "fine"}\n{"prompt": oops}\n')  # past the limit: still read
    with pytest.raises(EvalInputError, match="prompts.jsonl:2: not valid JSON"):
        load_prompts(config.prompts, 1)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_evaluation_file_loads_with_its_prompts_and_valid_decoders(path):
    config = load_config(path)
    prompts = config.prompt_set()
    assert prompts and len({p.id for p in prompts}) == len(prompts)
    for run in config.runs():
        params = {k: v for k, v in run.decoder.items() if k != "name"}
        decoder_registry()[run.decoder_name].Params.model_validate(params)  # the server would refuse it too


def test_eval_starts_the_default_server_in_process_when_no_url_is_given(tiny_llama, tiny_classifier, tmp_path):
    """``alignd eval file.yaml`` with nothing running: it serves the configuration itself, then stops it."""
    from conftest import tiny_config

    server_config = tmp_path / "alignd.yaml"
    server_config.write_text(json.dumps({**tiny_config(tiny_llama, tiny_classifier), "api_keys": []}))
    config = _write(tmp_path, [{"name": "sample", "decoder": "sample"}], kl_references=0, eval_rewards=[])
    command = [sys.executable, "-m", "alignd.server.cli", "eval", str(config), "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [*command, "--server-config", str(server_config), "--limit", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ALIGND_HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows"][0]["prompts"] == 2 and summary["meta"]["server"]["url"] == "in process"
    assert summary["meta"]["server"]["vllm"] and summary["meta"]["machine"]["cpus"]
    # Ctrl-C reaches the evaluation, not the server inside it: a clean stop and a report of what finished
    slow = _write(
        tmp_path,
        [{"name": "deal", "decoder": {"name": "deal", "top_k": 4, "lookahead": 8}, "request": {"max_tokens": 60}}],
        prompts=[{"id": f"p{i}", "prompt": f"Count to {i}."} for i in range(12)],
        kl_references=0,
        eval_rewards=[],
        concurrency=1,
    )
    out = tmp_path / "slow"
    proc = subprocess.Popen(
        [*command[:4], str(slow), "--out", str(out), "--server-config", str(server_config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ALIGND_HOME": str(tmp_path)},
        **INTERRUPTIBLE,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not any(json.loads(x)["config"] == "deal" for x in _lines(out / "results.jsonl")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130
    stderr = proc.stderr.read()
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert (out / "report.html").exists()
