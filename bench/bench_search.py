"""Token-level search decoders, batched vs naive, on the default model, in one run.

For deal, transfer_q and args at k = 10, and greedy decoding as the floor, on the same prompts:

  batched  the decoders as shipped: every candidate of a step in one engine call, one reward call per step
  naive    the same decoders with every engine call split into one call per candidate, awaited one after
           another, and every reward call split per text (no batching; prefix caching still on)

Reported: wall time per prompt, engine calls, engine calls per committed step, engine tokens, and the share of
wall time that is neither engine nor reward (orchestration). Targets (issue 4): batched at least k/2 = 5x
faster than naive; orchestration under 10%. Run: ``python bench/bench_search.py`` (about 8 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from wrapped import EngineWrapper

ROOT = Path(__file__).resolve().parent

PROMPTS = ["Write one sentence about a day at the beach.", "Give me one tip for a rainy morning."]


class NaiveEngine(EngineWrapper):
    """The engine, one prompt per call and one call at a time: what a decoder without batching would do."""

    async def generate(self, prompts, params, request_id, *, session=None):
        out = []
        for i, prompt in enumerate(prompts):
            out.extend(await self._engine.generate([prompt], params, f"{request_id}-naive{i}", session=session))
        return out


class NaiveReward:
    """A reward called once per text instead of once per batch."""

    def __init__(self, reward):
        self._reward = reward
        self.name, self.kind, self.params = reward.name, reward.kind, reward.params
        self.version, self.upstream = reward.version, reward.upstream

    async def score(self, prompt, completions):
        return [(await self._reward.score(prompt, [c]))[0] for c in completions]


async def main(args: argparse.Namespace) -> dict:
    from alignd.decoders import DecodeContext, DecodeRequest
    from alignd.decoders.args import ARGS, ARGSParams
    from alignd.decoders.deal import DeAL, DeALParams
    from alignd.decoders.transfer_q import TransferQ, TransferQParams
    from alignd.engines.models import DEFAULT_MODEL, prepare_default_model
    from alignd.engines.protocol import SamplingConfig
    from alignd.engines.vllm_local import VLLMEngine
    from alignd.rewards import RewardSet, RewardTerm, build_reward

    engine = VLLMEngine(DEFAULT_MODEL, str(prepare_default_model()), {"max_model_len": 2048})
    await engine.start()
    reward = build_reward("kw", {"type": "keywords", "keywords": ["sand", "waves", "umbrella", "coffee"]})
    k = args.k
    decoders = {
        "deal": lambda: DeAL(DeALParams(top_k=k, lookahead=args.lookahead, weight=5.0)),
        "transfer_q": lambda: TransferQ(TransferQParams(top_k=k, rollout_tokens=args.lookahead, alpha=0.2)),
        "args": lambda: ARGS(ARGSParams(top_k=k, weight=5.0)),
    }
    tok = engine.tokenizer
    rows = []

    def request(i: int, prompt: str):
        messages = [{"role": "user", "content": prompt}]
        ids = tok.encode(tok.apply_chat_template(messages))
        return DecodeRequest(
            f"bench-{i}-{time.monotonic_ns()}", ids, messages, SamplingConfig(max_tokens=args.max_tokens, seed=i)
        )

    try:
        walls = []
        for i, prompt in enumerate(PROMPTS):  # greedy floor
            req = request(i, prompt)
            start = time.perf_counter()
            await engine.generate([req.prompt_token_ids], req.sampling.but(temperature=0.0), req.request_id)
            walls.append(time.perf_counter() - start)
        rows.append(
            {
                "decoder": "greedy",
                "mode": "-",
                "wall_s": statistics.median(walls),
                "engine_calls": 1,
                "calls_per_step": None,
                "engine_tokens": None,
                "orchestration": None,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        for name, make in decoders.items():
            if args.decoders and name not in args.decoders:
                continue
            # One untimed decode first: the first batched step of a process pays one-off costs (allocations,
            # kernel selection for new batch shapes) that would otherwise land on whichever decoder runs first.
            warm = request(99, "Warm up.")
            await make().decode(warm, DecodeContext(engine, RewardSet([RewardTerm(reward)])))
            for mode in ("batched", "naive"):
                prompts = PROMPTS
                walls, usages, infos, timings = [], [], [], []
                for i, prompt in enumerate(prompts):
                    eng = engine if mode == "batched" else NaiveEngine(engine)
                    rw = reward if mode == "batched" else NaiveReward(reward)
                    ctx = DecodeContext(eng, RewardSet([RewardTerm(rw)]))
                    start = time.perf_counter()
                    result = await make().decode(request(i, prompt), ctx)
                    walls.append(time.perf_counter() - start)
                    usages.append(result.usage)
                    infos.append(result.info)
                    timings.append(result.timings)
                steps = sum(x["steps"] for x in infos)
                calls = sum(u.engine_calls if mode == "batched" else u.engine_requests for u in usages)
                rows.append(
                    {
                        "decoder": name,
                        "mode": mode,
                        "wall_s": statistics.median(walls),
                        # the naive engine splits each metered call into one call per request
                        "engine_calls": calls / len(usages),
                        "calls_per_step": calls / steps,
                        "engine_tokens": sum(u.engine_prompt_tokens + u.engine_completion_tokens for u in usages)
                        / len(usages),
                        "orchestration": statistics.median(t["orchestration"] / t["total"] for t in timings),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        await engine.shutdown()
    return {"model": DEFAULT_MODEL, "k": k, "lookahead": args.lookahead, "max_tokens": args.max_tokens, "rows": rows}


def table(result: dict) -> str:
    lines = [
        "| decoder | mode | wall / prompt (s) | engine calls | calls / step | engine tokens | orchestration |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["decoder"], r["mode"]): r for r in result["rows"]}
    for r in result["rows"]:
        speed = ""
        if r["mode"] == "naive":
            speed = f" ({r['wall_s'] / by[(r['decoder'], 'batched')]['wall_s']:.1f}x the batched time)"
        cps = "-" if r["calls_per_step"] is None else f"{r['calls_per_step']:.2f}"
        tokens = "-" if r["engine_tokens"] is None else f"{r['engine_tokens']:.0f}"
        orch = "-" if r["orchestration"] is None else f"{100 * r['orchestration']:.1f}%"
        lines.append(
            f"| {r['decoder']} | {r['mode']} | {r['wall_s']:.2f}{speed} | {r['engine_calls']:.0f} | {cps} | "
            f"{tokens} | {orch} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--lookahead", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--decoders", nargs="*", help="run only these (default: deal transfer_q args)")
    parser.add_argument("--out", default=str(ROOT / "results" / "search.json"))
    args = parser.parse_args()
    result = asyncio.run(main(args))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(result))
