"""Two vLLM servers serving eight concurrent DeAL searches: how much prefill each way of routing recomputes.

The default model (SmolLM2-135M, CPU settings) is served by vLLM OpenAI servers on loopback: one alone (the
baseline: one server serving the same requests) and two side by side. Eight DeAL searches (k = 10, lookahead 8,
16 new tokens, keyword reward) run at once on eight chat prompts that share a ~550-token system message (the
shipped URIAL principles and examples) and each carry ~600 tokens of their own (a document: notes no other request
shares), each search about 17 engine calls of 10 prompts over its own prefix:

  one server          every call to the single server
  per call            two servers, each call to the one with the fewest outstanding requests (no session)
  session, list       two servers, each request pinned to the least-loaded server at its first call
  session, router     two servers behind vllm-router (sticky_least_loaded), the session in x-session-id

Every server's prefix cache is emptied before each configuration (vLLM's /reset_prefix_cache). Reported from the
servers' own counters: prompt tokens, prompt tokens served from the prefix cache, the prefill actually computed
(their difference), the fleet's computed prefill against one server's, and the wall time. The target: with a
session, the fleet's computed prefill within 1.1x of one server's.

The one-server run is also recorded (every call's prompts, samples, generated and cached tokens, and when it
started) into ``bench/results/fleet_trace.jsonl``, which ``bench/fleet_sim.py`` replays on simulated fleets.
Run: ``python bench/bench_fleet.py`` (about 6 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

from wrapped import EngineWrapper  # noqa: E402

QUESTIONS = [
    "Write one sentence about a day at the beach.",
    "Give me one tip for a rainy morning.",
    "Name a fruit and say why you like it.",
    "What should I pack for a picnic?",
    "How do I keep bread fresh?",
    "Suggest a name for a small grey cat.",
    "What is a good way to start the day?",
    "Describe the sound of rain in a few words.",
]
KEYWORDS = ["sun", "water", "good", "day"]
VOCABULARY = (
    "the sea river stone bread garden window morning rain cloud summer winter letter market street friend music "
    "paper kitchen forest mountain lamp table story tree bird boat road city village light evening coffee book"
).split()
COUNTERS = {
    "prompt": "vllm:prompt_tokens_total",
    "queried": "vllm:prefix_cache_queries_total",
    "hit": "vllm:prefix_cache_hits_total",
}


class RecordingEngine(EngineWrapper):
    """The engine, with every call written down: its session, when it started, its prompts (each the request's
    base prompt plus a suffix), samples asked, tokens generated and cached. What the fleet simulation replays."""

    def __init__(self, engine, start: float):
        super().__init__(engine)
        self._start = start
        self.calls: list[dict] = []

    async def generate(self, prompts, params, request_id, *, session=None):
        began = time.perf_counter() - self._start
        gens = await self._engine.generate(prompts, params, request_id, session=session)
        self.calls.append(
            {
                "session": session,
                "start_s": began,
                "seconds": time.perf_counter() - self._start - began,
                "prompts": [list(p) for p in prompts],
                "n": params.n,
                "generated": [g.completion_tokens for g in gens],
                "cached": [g.num_cached_tokens for g in gens],
            }
        )
        return gens


def write_trace(calls: list[dict], path: Path) -> None:
    """The recorded calls as JSON lines. A search's prompts all extend its first one, so each prompt is stored as
    the tokens after its request's first prompt (``base``, written with the request's first call), and
    ``from_base`` says which prompts extend it; the trace stays small."""
    bases: dict[str, list[int]] = {}
    with path.open("w") as f:
        for call in calls:
            out = {k: v for k, v in call.items() if k != "prompts"}
            if call["session"] not in bases:
                bases[call["session"]] = out["base"] = call["prompts"][0]
            base = bases[call["session"]]
            extends = [p[: len(base)] == base for p in call["prompts"]]
            out["prompts"] = [p[len(base) :] if e else p for p, e in zip(call["prompts"], extends)]
            out["from_base"] = extends
            f.write(json.dumps(out, separators=(",", ":")) + "\n")


def _notes(i: int, words: int = 400) -> str:
    """A request's own long context (a document, retrieved passages): ~600 tokens no other request shares."""
    rng = random.Random(i)
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


def _system_message() -> str:
    from alignd.decoders.urial import load_prompt

    prompt = load_prompt()
    return f"{prompt.instruction}\n\n{prompt.examples}"


async def _searches(engine, label: str) -> float:
    """Eight DeAL searches at once, each its own session; the wall time."""
    from alignd.decoders import DecodeContext, DecodeRequest
    from alignd.decoders.deal import DeAL, DeALParams
    from alignd.engines.protocol import SamplingConfig
    from alignd.rewards import RewardSet, RewardTerm, build_reward

    rewards = RewardSet([RewardTerm(build_reward("kw", {"type": "keywords", "keywords": KEYWORDS}))])
    decoder = DeAL(DeALParams(top_k=10, lookahead=8))
    system = _system_message()
    tok = engine.tokenizer

    async def one(i: int, question: str) -> None:
        user = f"My notes:\n{_notes(i)}\n\n{question}"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        ids = tok.encode(tok.apply_chat_template(messages), add_special_tokens=False)
        rid = f"{label}-{i}"
        request = DecodeRequest(rid, ids, messages, SamplingConfig(max_tokens=16, temperature=0.0))
        session = None if label == "per-call" else rid
        await decoder.decode(request, DecodeContext(engine, rewards, session=session))

    start = time.perf_counter()
    await asyncio.gather(*(one(i, q) for i, q in enumerate(QUESTIONS)))
    return time.perf_counter() - start


def _counters(servers) -> list[dict[str, float]]:
    from serverproc import metric

    return [{key: metric(s, name) for key, name in COUNTERS.items()} for s in servers]


def _reset(servers) -> None:
    import httpx

    for s in servers:
        httpx.post(s.url + "/reset_prefix_cache", timeout=30).raise_for_status()


async def _run(label: str, engine, servers) -> dict:
    _reset(servers)
    before = _counters(servers)
    seconds = await _searches(engine, label)
    after = _counters(servers)
    per_server = [{k: a[k] - b[k] for k in COUNTERS} for a, b in zip(after, before)]
    total = {k: sum(p[k] for p in per_server) for k in COUNTERS}
    computed = total["queried"] - total["hit"]
    return {
        "config": label,
        "seconds": seconds,
        "prompt_tokens": total["prompt"],
        "cached_tokens": total["hit"],
        "hit_rate": total["hit"] / total["queried"] if total["queried"] else None,
        "computed_prefill": computed,
        "computed_per_server": [p["queried"] - p["hit"] for p in per_server],
    }


async def main(args: argparse.Namespace) -> dict:
    from alignd.engines.models import DEFAULT_MODEL, prepare_default_model
    from alignd.engines.remote import RemoteEngine

    from serverproc import launch_router, launch_vllm_server, stop_server, wait_healthy

    path = prepare_default_model()
    logs = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # /reset_prefix_cache, so each configuration starts cold
    flags = ["--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 30), "--enable-prompt-tokens-details"]
    servers = wait_healthy(
        [launch_vllm_server(path, logs / f"vllm-{i}.log", *flags, served_name=DEFAULT_MODEL) for i in range(3)]
    )
    single, pair = servers[:1], servers[1:]
    [router] = wait_healthy([launch_router(pair, logs / "router.log")])
    engines: dict[str, RemoteEngine] = {
        "one server": RemoteEngine("one", str(path), {"urls": [single[0].url]}),
        "per call": RemoteEngine("pair", str(path), {"urls": [s.url for s in pair]}),
        "session, list": RemoteEngine("pinned", str(path), {"urls": [s.url for s in pair]}),
        "session, router": RemoteEngine("routed", str(path), {"router": router.url}),
    }
    rows = []
    try:
        await asyncio.gather(*(e.start() for e in engines.values()))
        await _searches(engines["one server"], "warm-up")  # the servers' first requests pay one-off costs
        recorder = RecordingEngine(engines["one server"], time.perf_counter())
        rows.append(await _run("one server", recorder, single))
        for label in ("per call", "session, list", "session, router"):
            rows.append(await _run(label.replace(", ", "-").replace(" ", "-"), engines[label], pair))
            rows[-1]["config"] = label
        write_trace(recorder.calls, ROOT / "results" / "fleet_trace.jsonl")
    finally:
        await asyncio.gather(*(e.shutdown() for e in engines.values()))
        stop_server(router)
        for s in servers:
            stop_server(s)
    base = rows[0]["computed_prefill"]
    for row in rows:
        row["computed_vs_one_server"] = row["computed_prefill"] / base
    return {"model": DEFAULT_MODEL, "searches": len(QUESTIONS), "decoder": "deal k=10 lookahead=8", "rows": rows}


def report(result: dict) -> None:
    print("| configuration | prompt tokens | from the prefix cache | computed prefill | vs one server | wall (s) |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        split = " + ".join(f"{v:,.0f}" for v in r["computed_per_server"])
        print(
            f"| {r['config']} | {r['prompt_tokens']:,.0f} | {r['cached_tokens']:,.0f} ({r['hit_rate']:.0%}) | "
            f"{r['computed_prefill']:,.0f} ({split}) | {r['computed_vs_one_server']:.2f}x | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fleet.json")
    result = asyncio.run(main(parser.parse_args()))
    parser.parse_args().out.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
