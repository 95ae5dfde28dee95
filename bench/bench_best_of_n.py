"""Overhead of best-of-N: raw AsyncLLM vs the decoder in process vs the HTTP API, on the default model.

For N in {1, 4, 16}, the same request (fixed prompt, max_tokens, ignore_eos so every run decodes the same
number of tokens, a seed) is timed three ways:

  raw      vLLM's AsyncLLM.generate with n=N, then the reward scores the N texts (timed separately)
  decoder  BestOfN.decode through alignd's engine adapter and RewardSet, in this process
  http     POST /v1/completions with decoder best_of_n to an `alignd serve` subprocess

Targets (issue 2): decoder <= 1.10 x (raw engine + reward), http <= 1.15 x. Each cell is the median of
``--repeats`` runs after one warm-up. Run: ``make bench`` or ``python bench/bench_best_of_n.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


async def main(args: argparse.Namespace) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    from alignd.decoders import DecodeContext, DecodeRequest
    from alignd.decoders.best_of_n import BestOfN
    from alignd.engines.models import DEFAULT_MODEL, prepare_default_model
    from alignd.engines.protocol import SamplingConfig
    from alignd.engines.vllm_local import VLLMEngine
    from alignd.rewards import RewardSet, RewardTerm, build_reward

    from serverproc import start_server, stop_server

    folder = prepare_default_model()
    engine = VLLMEngine(DEFAULT_MODEL, str(folder), {})
    await engine.start()
    llm = engine._llm
    tok = engine.tokenizer
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]))
    reward = build_reward("length", {"type": "length"})
    rewards = RewardSet([RewardTerm(reward)])
    sampling = SamplingConfig(max_tokens=args.max_tokens, temperature=1.0, ignore_eos=True)

    server = start_server({"limits": {"max_candidates": 64}}, Path(args.workdir))
    http = httpx.Client(base_url=server.url, timeout=600)
    rows = []
    try:
        for n in args.n:
            times: dict[str, list[float]] = {"raw_engine": [], "raw_reward": [], "decoder": [], "http": []}

            async def raw(seed: int) -> None:
                sp = SamplingParams(
                    n=n,
                    max_tokens=args.max_tokens,
                    temperature=1.0,
                    ignore_eos=True,
                    seed=seed,
                    output_kind=RequestOutputKind.FINAL_ONLY,
                )
                start = time.perf_counter()
                async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), sp, f"raw-{n}-{seed}"):
                    final = out
                mid = time.perf_counter()
                await reward.score(PROMPT, [c.text for c in final.outputs])
                end = time.perf_counter()
                times["raw_engine"].append(mid - start)
                times["raw_reward"].append(end - mid)

            async def decoder(seed: int) -> None:
                request = DecodeRequest(f"dec-{n}-{seed}", ids, PROMPT, sampling.but(seed=seed))
                start = time.perf_counter()
                await BestOfN(BestOfN.Params(num_candidates=n)).decode(request, DecodeContext(engine, rewards))
                times["decoder"].append(time.perf_counter() - start)

            def over_http(seed: int) -> None:
                body = {
                    "model": DEFAULT_MODEL,
                    "prompt": tok.decode(ids, skip_special_tokens=False),
                    "max_tokens": args.max_tokens,
                    "temperature": 1.0,
                    "ignore_eos": True,
                    "seed": seed,
                    "decoder": {"name": "best_of_n", "num_candidates": n},
                    "reward": "length",
                }
                start = time.perf_counter()
                r = http.post("/v1/completions", json=body)
                r.raise_for_status()
                times["http"].append(time.perf_counter() - start)

            await raw(0), await decoder(0)
            over_http(0)  # warm-up of each path
            for key in times:
                times[key].clear()
            for rep in range(1, args.repeats + 1):
                # Interleave the three paths so drift (thermal, page cache) hits all of them alike.
                await raw(rep)
                await decoder(rep)
                over_http(rep)
            med = {k: statistics.median(v) for k, v in times.items()}
            base = med["raw_engine"] + med["raw_reward"]
            rows.append(
                {
                    "n": n,
                    "raw_engine_s": med["raw_engine"],
                    "raw_reward_s": med["raw_reward"],
                    "decoder_s": med["decoder"],
                    "http_s": med["http"],
                    "decoder_ratio": med["decoder"] / base,
                    "http_ratio": med["http"] / base,
                    "tokens_per_s_raw": n * args.max_tokens / med["raw_engine"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        http.close()
        stop_server(server)
        await engine.shutdown()
    return {"model": DEFAULT_MODEL, "max_tokens": args.max_tokens, "repeats": args.repeats, "rows": rows}


def table(result: dict) -> str:
    lines = [
        "| N | raw engine (s) | reward (s) | decoder (s) | HTTP (s) | decoder / raw | HTTP / raw | raw tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['n']} | {r['raw_engine_s']:.3f} | {r['raw_reward_s']:.4f} | {r['decoder_s']:.3f} | "
            f"{r['http_s']:.3f} | {r['decoder_ratio']:.3f} | {r['http_ratio']:.3f} | {r['tokens_per_s_raw']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/alignd-bench")
    parser.add_argument("--out", default=str(ROOT / "results" / "best_of_n.json"))
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    result = asyncio.run(main(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(result))
