"""Adaptive compute on the default model, over HTTP, as a client sees it.

1. Time to first token: ``blockwise_best_of_n`` streams each block as it is chosen (8-token blocks, and with a
   1-token first block), while ``best_of_n`` can show nothing before its last candidate is scored; all against
   plain streamed sampling (the floor). Target: the block-wise search's first token within 1.5x of sampling's.
   A 1-token first block of K=4 sequences cannot come sooner than vLLM's own one-token answer with ``n=4``, so
   that is timed too (``sample``, ``max_tokens`` 1, not streamed); ``first_token: one_step`` draws the K first
   tokens from one decoding step of one sequence instead, so its floor is the ``n=1`` answer.
2. A small request beside a large search: a short greedy completion alone, then sent while a budget-capped DeAL
   search (one beam, wide lookahead, ``budget.max_engine_tokens``) is running. The engine batches both, so the
   small one is not queued behind the search; how much slower it gets on a CPU shared with the search is the
   number reported.

Each is measured ``--repeats`` times after an untimed warm-up; medians are reported. Every stream is read to its
end, so each request starts on an idle engine (a client leaving after its first token would have the next
request's first token wait behind the engine step that the abort lets finish). Run:
``python bench/bench_adaptive.py`` (about 4 minutes on 2 cores, 6 with ``--repeats 15``); results in
``bench/results/adaptive.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

QUESTION = [{"role": "user", "content": "Give me three tips for a good night's sleep."}]
SMALL = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
LARGE_BUDGET = 20_000


def first_token_s(http: httpx.Client, model: str, decoder: dict, seed: int) -> float:
    """Seconds from sending a streamed chat request to its first non-empty content delta (read to the end)."""
    body = {"model": model, "messages": QUESTION, "max_tokens": 64, "stream": True, "seed": seed, "decoder": decoder}
    if decoder["name"] != "sample":
        body["reward"] = "length"
    first = None
    start = time.perf_counter()
    with http.stream("POST", "/v1/chat/completions", json=body, timeout=300) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - start
    if first is None:
        raise RuntimeError(f"{decoder['name']} streamed no content")
    return first


def one_token_s(http: httpx.Client, model: str, n: int, seed: int) -> float:
    """Seconds for ``n`` one-token answers of the chat question, plain sampling, not streamed."""
    body = {"model": model, "messages": QUESTION, "max_tokens": 1, "n": n, "seed": seed, "temperature": 1.0}
    start = time.perf_counter()
    http.post("/v1/chat/completions", json=body, timeout=300).raise_for_status()
    return time.perf_counter() - start


def small_request_s(http: httpx.Client, model: str) -> float:
    start = time.perf_counter()
    http.post("/v1/completions", json={"model": model, **SMALL}, timeout=300).raise_for_status()
    return time.perf_counter() - start


def beside_large_search(server, model: str, repeats: int) -> tuple[list[float], dict]:
    """The small request's latency while a capped DeAL search streams; the search's own usage."""
    large = {
        "model": model,
        "prompt": "Write a short story about a lighthouse keeper.",
        "max_tokens": 200,
        "reward": "length",
        "decoder": {"name": "deal", "top_k": 8, "lookahead": 32},
        "budget": {"max_engine_tokens": LARGE_BUDGET},
        "stream": True,
    }
    started, final = threading.Event(), {}

    def search() -> None:
        with server.client() as other, other.stream("POST", "/v1/align", json=large, timeout=600) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    started.set()
                    final.update(json.loads(line[6:]))

    worker = threading.Thread(target=search)
    worker.start()
    if not started.wait(120):
        raise RuntimeError("the large search never streamed")
    times = []
    with server.client() as http:
        for _ in range(repeats):
            if not worker.is_alive():
                break
            times.append(small_request_s(http, model))
    worker.join()
    return times, {"info": final.get("info"), "seconds": final.get("timings", {}).get("total")}


def main(args: argparse.Namespace) -> dict:
    from alignd.engines.models import DEFAULT_MODEL, prepare_default_model

    from serverproc import start_server, stop_server

    prepare_default_model()
    decoders = {
        "sample": {"name": "sample"},
        "blockwise_best_of_n": {"name": "blockwise_best_of_n", "num_candidates": 4, "block": 8},
        "blockwise_best_of_n first_block=1": {
            "name": "blockwise_best_of_n",
            "num_candidates": 4,
            "block": 8,
            "first_block": 1,
        },
        "blockwise_best_of_n first_block=1 one_step": {
            "name": "blockwise_best_of_n",
            "num_candidates": 4,
            "block": 8,
            "first_block": 1,
            "first_token": "one_step",
        },
        "best_of_n": {"name": "best_of_n", "num_candidates": 4},
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server({}, Path(tmp))
        try:
            ttft: dict[str, list[float]] = {name: [] for name in decoders}
            with server.client() as http:
                for decoder in decoders.values():
                    first_token_s(http, DEFAULT_MODEL, decoder, seed=0)  # warm-up
                one_token: dict[int, list[float]] = {1: [], 4: []}
                for k in range(args.repeats):
                    for name, decoder in decoders.items():
                        ttft[name].append(first_token_s(http, DEFAULT_MODEL, decoder, seed=k + 1))
                    for n, times in one_token.items():
                        times.append(one_token_s(http, DEFAULT_MODEL, n, seed=k + 1))
                small_request_s(http, DEFAULT_MODEL)
                alone = [small_request_s(http, DEFAULT_MODEL) for _ in range(args.repeats)]
            beside, large = beside_large_search(server, DEFAULT_MODEL, args.repeats)
        finally:
            stop_server(server)
    first = {name: statistics.median(v) for name, v in ttft.items()}
    return {
        "model": DEFAULT_MODEL,
        "repeats": args.repeats,
        "time_to_first_token_s": first,
        "blockwise_over_sample": first["blockwise_best_of_n"] / first["sample"],
        "blockwise_first_block_1_over_sample": first["blockwise_best_of_n first_block=1"] / first["sample"],
        "blockwise_one_step_over_sample": first["blockwise_best_of_n first_block=1 one_step"] / first["sample"],
        "best_of_n_over_sample": first["best_of_n"] / first["sample"],
        "one_token_answers_s": {f"n={n}": statistics.median(v) for n, v in one_token.items()},
        "small_request_s": {
            "alone": statistics.median(alone),
            "beside_large_search": statistics.median(beside) if beside else None,
            "samples_beside": len(beside),
        },
        "beside_over_alone": statistics.median(beside) / statistics.median(alone) if beside else None,
        "large_search": {"budget_max_engine_tokens": LARGE_BUDGET, **large},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "adaptive.json")
    args = parser.parse_args()
    out = main(args)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
