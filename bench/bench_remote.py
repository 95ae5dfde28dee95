"""The remote engine against the in-process one, on the default model, in one run.

A vLLM OpenAI server (``python -m vllm.entrypoints.openai.api_server``, same CPU settings as alignd's in-process
engine) serves SmolLM2-135M on loopback; the same decoders run on the in-process ``AsyncLLM`` and on a
:class:`~alignd.engines.remote.RemoteEngine` in front of that server:

  sample     greedy, 64 tokens (one engine call)
  best_of_n  N = 8, 64 tokens, length reward (one engine call with n = 8)
  deal       k = 10, lookahead 8, 12 tokens, keywords reward (one engine call of 10 prompts per step)

Reported: wall time per prompt (median over the prompts, after one warm-up decode each), the remote/in-process
ratio (the cost of the HTTP hop, JSON and detokenizing on the server), and whether the answers are identical.
Then a burst of 8 concurrent best_of_n requests over two servers shows how the balancer splits them.
Run: ``python bench/bench_remote.py`` (about 5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

PROMPTS = [
    "Write one sentence about a day at the beach.",
    "Give me one tip for a rainy morning.",
    "Name a fruit and say why you like it.",
    "What should I pack for a picnic?",
]


def _server_args() -> list[str]:
    # Flags given after launch_vllm_server's test defaults win (argparse keeps the last occurrence).
    return ["--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 30), "--enable-prompt-tokens-details"]


async def main(args: argparse.Namespace) -> dict:
    from alignd.decoders import DecodeContext, DecodeRequest, decoder_registry
    from alignd.engines.models import DEFAULT_MODEL, prepare_default_model
    from alignd.engines.protocol import SamplingConfig
    from alignd.engines.remote import RemoteEngine, RemoteOptions
    from alignd.engines.vllm_local import VLLMEngine
    from alignd.rewards import RewardSet, RewardTerm, build_reward

    from serverproc import launch_vllm_server, stop_server, wait_healthy

    path = prepare_default_model()
    logs = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    servers = wait_healthy(
        [launch_vllm_server(path, logs / f"vllm-{i}.log", *_server_args(), served_name=DEFAULT_MODEL) for i in range(2)]
    )
    local = VLLMEngine(DEFAULT_MODEL, str(path), {"max_model_len": 2048})
    remote = RemoteEngine(DEFAULT_MODEL, str(path), RemoteOptions(urls=[servers[0].url]))
    fleet = RemoteEngine(DEFAULT_MODEL, str(path), RemoteOptions(urls=[s.url for s in servers]))
    rewards = {
        "length": build_reward("length", {"type": "length", "unit": "chars"}),
        "keywords": build_reward("kw", {"type": "keywords", "keywords": ["sand", "waves", "umbrella", "coffee"]}),
    }
    workloads = {
        "sample": ("sample", {}, SamplingConfig(max_tokens=64, temperature=0.0, ignore_eos=True), None),
        "best_of_n": (
            "best_of_n",
            {"num_candidates": 8},
            SamplingConfig(max_tokens=64, temperature=1.0, seed=0, ignore_eos=True),
            "length",
        ),
        "deal": ("deal", {"top_k": 10, "lookahead": 8}, SamplingConfig(max_tokens=12), "keywords"),
    }
    rows = []
    try:
        await asyncio.gather(local.start(), remote.start(), fleet.start())
        tok = local.tokenizer
        ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in PROMPTS]

        async def decode(engine, workload: str, i: int, prompt_ids: list[int]):
            decoder, params, sampling, reward = workloads[workload]
            cls = decoder_registry()[decoder]
            rs = RewardSet([RewardTerm(rewards[reward])]) if reward else None
            request = DecodeRequest(f"{workload}-{i}-{time.monotonic_ns()}", prompt_ids, PROMPTS[i % 4], sampling)
            return await cls(cls.Params.model_validate(params)).decode(request, DecodeContext(engine, rs))

        for workload in workloads:
            row = {"workload": workload}
            answers = {}
            for label, engine in (("in_process", local), ("remote", remote)):
                await decode(engine, workload, 99, tok.encode("Warm up."))
                walls, texts = [], []
                for i, prompt_ids in enumerate(ids):
                    start = time.perf_counter()
                    result = await decode(engine, workload, i, prompt_ids)
                    walls.append(time.perf_counter() - start)
                    texts.append([c.token_ids for c in result.choices])
                row[f"{label}_s"] = statistics.median(walls)
                answers[label] = texts
            row["ratio"] = row["remote_s"] / row["in_process_s"]
            row["same_answers"] = answers["remote"] == answers["in_process"]
            rows.append(row)
            print(json.dumps(row), flush=True)

        burst = await asyncio.gather(*(decode(fleet, "best_of_n", i, ids[i % 4]) for i in range(8)))
        split = {b.url: b.requests for b in fleet.backends}
        failovers = fleet.fleet.failovers
        fleet_row = {"burst": len(burst), "requests_per_server": list(split.values()), "failovers": failovers}
        print(json.dumps(fleet_row), flush=True)
    finally:
        await asyncio.gather(local.shutdown(), remote.shutdown(), fleet.shutdown())
        for server in servers:
            stop_server(server)
    return {"model": DEFAULT_MODEL, "prompts": len(PROMPTS), "rows": rows, "fleet": fleet_row}


def table(result: dict) -> str:
    lines = [
        "| workload | in process (s) | remote (s) | remote / in process | same answers |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['workload']} | {r['in_process_s']:.2f} | {r['remote_s']:.2f} | {r['ratio']:.2f}x | "
            f"{'yes' if r['same_answers'] else 'no'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "results" / "remote.json"))
    args = parser.parse_args()
    result = asyncio.run(main(args))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"fleet burst: {result['fleet']}")
