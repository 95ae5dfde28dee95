"""Wall time and engine tokens of each decoder next to plain sampling, on the default model, in one run.

Every decoder answers the same prompts through the in-process engine (the HTTP layer adds ~1%, see
bench_best_of_n.py). Reported per decoder: median wall time per prompt, engine calls, engine prompt and
completion tokens, prefix-cache hits (cached prompt tokens) and the share of wall time that was neither engine
nor reward ("orchestration"). Run: ``python bench/bench_decoders.py`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent

PROMPTS = [
    "Give me one tip for sleeping better.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a reward model is in one sentence.",
]

DECODERS = {
    "sample (greedy)": ("sample", {}, {"temperature": 0.0}),
    "sample (t=1)": ("sample", {}, {"temperature": 1.0}),
    "best_of_n N=4": ("best_of_n", {"num_candidates": 4}, {}),
    "ctrl N=4 K=16": ("ctrl", {"num_candidates": 4, "reference_samples": 16}, {}),
    "ctrl threshold": (
        "ctrl",
        {"select": "threshold", "tau": 0.8, "round_size": 2, "max_candidates": 8, "reference_samples": 16},
        {},
    ),
    "diverse_beam B=4 G=4": ("diverse_beam", {"beam_width": 4, "groups": 4, "diversity_penalty": 0.5}, {}),
    "diverse_beam B=4 G=1": ("diverse_beam", {"beam_width": 4, "groups": 1}, {}),
    "urial": ("urial", {}, {}),
}


async def main(args: argparse.Namespace) -> dict:
    from alignd.decoders import DecodeContext, DecodeRequest, decoder_registry
    from alignd.engines.models import DEFAULT_MODEL, prepare_default_model
    from alignd.engines.protocol import SamplingConfig
    from alignd.engines.vllm_local import VLLMEngine
    from alignd.rewards import RewardContext, RewardSet, RewardTerm, build_reward

    engine = VLLMEngine(DEFAULT_MODEL, str(prepare_default_model()), {})
    await engine.start()
    judge = build_reward("judge", {"type": "judge"}, RewardContext({DEFAULT_MODEL: engine}, DEFAULT_MODEL))
    await judge.start()
    rewards = RewardSet([RewardTerm(judge)])
    registry = decoder_registry()
    tok = engine.tokenizer
    rows = []
    try:
        for label, (name, params, sampling) in DECODERS.items():
            if name not in registry:
                print(f"skip {label}: decoder {name!r} not installed", flush=True)
                continue
            cls = registry[name]
            walls, usages, timings = [], [], []
            for i, prompt in enumerate(PROMPTS):
                messages = [{"role": "user", "content": prompt}]
                ids = tok.encode(tok.apply_chat_template(messages))
                req = DecodeRequest(
                    f"bench-{name}-{i}",
                    ids,
                    messages,
                    SamplingConfig(max_tokens=args.max_tokens, seed=i, **sampling),
                )
                ctx = DecodeContext(engine, rewards if cls.requires_reward else None)
                start = time.perf_counter()
                result = await cls(cls.Params.model_validate(params)).decode(req, ctx)
                walls.append(time.perf_counter() - start)
                usages.append(result.usage)
                timings.append(result.timings)
            row = {
                "decoder": label,
                "wall_s": statistics.median(walls),
                "engine_calls": sum(u.engine_calls for u in usages) / len(usages),
                "engine_prompt_tokens": sum(u.engine_prompt_tokens for u in usages) / len(usages),
                "engine_completion_tokens": sum(u.engine_completion_tokens for u in usages) / len(usages),
                "cached_prompt_tokens": sum(u.engine_cached_tokens for u in usages) / len(usages),
                "reward_s": statistics.median(u.reward_seconds for u in usages),
                "orchestration_share": statistics.median(t["orchestration"] / t["total"] for t in timings),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        await engine.shutdown()
    return {"model": DEFAULT_MODEL, "max_tokens": args.max_tokens, "prompts": len(PROMPTS), "rows": rows}


def table(result: dict) -> str:
    lines = [
        "| decoder | wall / prompt (s) | engine calls | engine prompt tok | engine completion tok | cached prompt tok "
        "| reward (s) | orchestration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['decoder']} | {r['wall_s']:.2f} | {r['engine_calls']:.0f} | {r['engine_prompt_tokens']:.0f} | "
            f"{r['engine_completion_tokens']:.0f} | {r['cached_prompt_tokens']:.0f} | {r['reward_s']:.2f} | "
            f"{100 * r['orchestration_share']:.1f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", default=str(ROOT / "results" / "decoders.json"))
    args = parser.parse_args()
    result = asyncio.run(main(args))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(result))
    sys.exit(0)
