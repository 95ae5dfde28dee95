"""Step-level search, batched vs naive, on the default model: ``step_beam`` as shipped (every live path's next
steps in one engine call, every new path scored in one reward call) against the same search made naive (every
engine call split into one call per path, awaited one after another, and every reward call split per text), as
``bench_search.py`` does for DeAL.

The prompts are the shipped arithmetic questions; the step reward is programmatic (each path scored by whether
its last number is the right answer, a prefix reward that any outcome reward can be). Reported: wall time per
prompt, engine calls, engine calls per step, reward calls per step. Run: ``python bench/bench_steps.py``
(about 5 minutes); results in ``bench/results/steps.json``.
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
sys.path.insert(0, str(ROOT))

from bench_search import NaiveEngine, NaiveReward  # noqa: E402

QUESTIONS = [
    ("What is 7 + 8? Think step by step, one step per paragraph.", "15"),
    ("What is 3 times 4? Think step by step, one step per paragraph.", "12"),
    ("What is 20 - 7? Think step by step, one step per paragraph.", "13"),
]


async def main(args: argparse.Namespace) -> dict:
    from alignd.decoders import DecodeContext, DecodeRequest
    from alignd.decoders.step_beam import StepBeam, StepBeamParams
    from alignd.engines.models import DEFAULT_MODEL, prepare_default_model
    from alignd.engines.protocol import SamplingConfig
    from alignd.engines.vllm_local import VLLMEngine
    from alignd.rewards import RewardSet, RewardTerm, build_reward

    engine = VLLMEngine(DEFAULT_MODEL, str(prepare_default_model()), {"max_model_len": 2048})
    await engine.start()
    params = StepBeamParams(beam_width=args.beams, expansions=args.expansions, max_step_tokens=32, max_steps=4)
    rows = {}
    try:
        for mode in ("batched", "naive"):
            walls, calls, steps, reward_calls = [], [], [], []
            for i, (question, answer) in enumerate(QUESTIONS):
                reward = build_reward("right", {"type": "regex", "pattern": rf"\b{answer}\b"})
                rewards = RewardSet([RewardTerm(NaiveReward(reward) if mode == "naive" else reward)])
                messages = [{"role": "user", "content": question}]
                ids = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(messages))
                request = DecodeRequest(f"{mode}-{i}", ids, messages, SamplingConfig(max_tokens=128, seed=i))
                target = NaiveEngine(engine) if mode == "naive" else engine
                warm = DecodeRequest(f"{mode}-{i}-warm", ids, messages, SamplingConfig(max_tokens=16, seed=i))
                await StepBeam(params).decode(warm, DecodeContext(target, rewards))  # untimed warm-up
                start = time.perf_counter()
                result = await StepBeam(params).decode(request, DecodeContext(target, rewards))
                walls.append(time.perf_counter() - start)
                # the naive engine and reward split each call the decoder makes: count what they really sent
                naive = mode == "naive"
                calls.append(result.usage.engine_requests if naive else result.usage.engine_calls)
                steps.append(result.info["steps"])
                reward_calls.append(result.usage.candidates_scored if naive else result.usage.reward_calls)
            rows[mode] = {
                "wall_per_prompt_s": statistics.median(walls),
                "engine_calls": statistics.mean(calls),
                "engine_calls_per_step": sum(calls) / sum(steps),
                "reward_calls_per_step": sum(reward_calls) / sum(steps),
                "steps": statistics.mean(steps),
            }
    finally:
        await engine.shutdown()
    rows["speedup"] = rows["naive"]["wall_per_prompt_s"] / rows["batched"]["wall_per_prompt_s"]
    return {"beams": args.beams, "expansions": args.expansions, **rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--expansions", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "steps.json")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
