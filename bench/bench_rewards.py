"""Reward throughput: ``classifier`` (transformers) vs ``vllm_pooling`` at batch sizes 1, 8 and 32, and the gain
of cross-request batching under 8 concurrent requests, in one run.

The reward model has SmolLM2-135M's architecture with a one-logit classification head (random weights: no
neural reward model can be downloaded here, and throughput does not depend on the weights' values). Texts are
~50-token prompt/answer pairs. Run: ``python bench/bench_rewards.py`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROMPT = "Give me one practical tip for sleeping better at night."
ANSWERS = [
    f"Tip {i}: keep a regular schedule, dim the lights an hour before bed and keep your phone out of the room."
    for i in range(64)
]


def build_rm(folder: Path) -> Path:
    """A SmolLM2-135M-shaped LlamaForSequenceClassification with random weights, saved once."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    from alignd.engines.models import prepare_default_model

    base = prepare_default_model()
    config = AutoConfig.from_pretrained(base)
    config.num_labels = 1
    config.pad_token_id = config.eos_token_id
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).to(torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


async def main(args: argparse.Namespace) -> dict:
    from alignd.rewards import build_reward

    path = str(build_rm(Path(args.workdir) / "rm-135m"))
    kinds = {
        "classifier": {"type": "classifier", "path": path, "batch_window_ms": 0},
        "vllm_pooling": {"type": "vllm_pooling", "path": path, "engine_args": {"max_model_len": 1024}},
    }
    rows = []
    for kind, config in kinds.items():
        for bs in (1, 8, 32):
            reward = build_reward(kind, {**config, **({"batch_size": bs} if kind == "classifier" else {})})
            await reward.start()
            await reward.score(PROMPT, ANSWERS[:bs])  # warm-up
            start = time.perf_counter()
            for i in range(0, len(ANSWERS), bs):
                await reward.score(PROMPT, ANSWERS[i : i + bs])
            elapsed = time.perf_counter() - start
            rows.append({"kind": kind, "batch": bs, "texts_per_s": len(ANSWERS) / elapsed})
            print(json.dumps(rows[-1]), flush=True)
            await reward.close()

    concurrency = []
    for window in (0.0, 5.0):
        reward = build_reward("rm", {"type": "classifier", "path": path, "batch_size": 32, "batch_window_ms": window})
        await reward.start()
        await reward.score(PROMPT, ANSWERS[:4])
        before = reward.forward_passes
        start = time.perf_counter()
        await asyncio.gather(*(reward.score(f"{PROMPT} ({i})", ANSWERS[4 * i : 4 * i + 4]) for i in range(8)))
        elapsed = time.perf_counter() - start
        concurrency.append(
            {
                "batch_window_ms": window,
                "wall_s": elapsed,
                "forward_passes": reward.forward_passes - before,
                "texts_per_s": 32 / elapsed,
            }
        )
        print(json.dumps(concurrency[-1]), flush=True)
    return {"throughput": rows, "concurrent_8x4": concurrency}


def table(result: dict) -> str:
    lines = ["| reward | batch 1 (texts/s) | batch 8 | batch 32 |", "|---|---|---|---|"]
    for kind in ("classifier", "vllm_pooling"):
        cells = [f"{r['texts_per_s']:.1f}" for r in result["throughput"] if r["kind"] == kind]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "| 8 concurrent requests x 4 texts | wall (s) | forward passes | texts/s |", "|---|---|---|---|"]
    for r in result["concurrent_8x4"]:
        label = "no cross-request batching" if r["batch_window_ms"] == 0 else f"{r['batch_window_ms']:g} ms window"
        lines.append(f"| {label} | {r['wall_s']:.2f} | {r['forward_passes']} | {r['texts_per_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/alignd-bench")
    parser.add_argument("--out", default=str(ROOT / "results" / "rewards.json"))
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    result = asyncio.run(main(args))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(result))
