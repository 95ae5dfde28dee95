"""A capacity model for what this machine cannot show: alignd's engine calls replayed on simulated fleets of R
replicas with block-level prefix caches, under six ways of routing them.

The workload is recorded, not invented: ``bench/bench_fleet.py`` writes every engine call of eight DeAL searches on
the default model (``bench/results/fleet_trace.jsonl``: each call's session, start, prompts, samples, generated and
cached tokens). A simulated request replays one recorded request's calls in order, each after the one before it
finished plus the gap the recording saw between them (the reward's time); its prompts keep the recorded tokens, so
they share exactly what the recorded ones shared: the system message with every request, the growing prefix with
the request's own earlier calls. Requests arrive as a Poisson process, at a rate that keeps each replica at the
same load whatever R.

Each replica serves calls first come, first served, with a prefix cache of ``cache_blocks`` blocks of
``block_size`` tokens (LRU, as vLLM's): a prompt computes only the blocks after its longest cached prefix, and a
call's service time is ``computed prefill / prefill_rate + generated tokens / decode_rate``. The routings:

  round_robin      each call to the next replica
  least_loaded     each call to the replica with the least work queued
  balancer         each call to the replica with the fewest calls outstanding, ties by a hash of the prompt's first
                   64 tokens (alignd's list of servers before sessions)
  sticky           each request pinned to the least-loaded replica at its first call (alignd's list of servers,
                   vllm-router's sticky_least_loaded)
  consistent_hash  each request to the replica its session hashes to on a ring (vllm-router's consistent_hash)
  cache_aware      each call to the replica holding the longest prefix of its prompt when that is over half of it
                   and that replica is not overloaded, else the least loaded (vllm-router's cache_aware)

Reported per R and routing: the prefill computed against one replica that saw every request (the floor), the hit
rate, request latency p50/p99, and imbalance (the busiest replica's work over the mean). ``--calibrate`` fits the
two rates to the recorded CPU calls (least squares); the default rates are the GPU assumptions the benchmarks page
states. Run: ``python bench/fleet_sim.py`` (seconds).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import heapq
import json
import random
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
POLICIES = ("round_robin", "least_loaded", "balancer", "sticky", "consistent_hash", "cache_aware")


@dataclass
class Call:
    prompts: list[list[int]]
    generated: int
    gap_s: float
    """Idle time before this call, after the previous call of its request finished."""


@dataclass
class Replica:
    cache: OrderedDict = field(default_factory=OrderedDict)
    queue: list = field(default_factory=list)
    busy_until: float = 0.0
    work_s: float = 0.0
    outstanding: int = 0
    queued_s: float = 0.0


def records(path: Path) -> list[dict]:
    """The recorded calls, each prompt whole again (the trace stores what follows its request's first prompt)."""
    out, bases = [], {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        base = bases.setdefault(record["session"], record.get("base", []))
        record["prompts"] = [base + p if e else p for p, e in zip(record["prompts"], record["from_base"])]
        out.append(record)
    return out


def load_trace(path: Path) -> list[list[Call]]:
    """The recorded requests, each its calls in order."""
    by_session: dict[str, list[dict]] = {}
    for record in records(path):
        by_session.setdefault(record["session"], []).append(record)
    requests = []
    for calls in by_session.values():
        calls.sort(key=lambda c: c["start_s"])
        out, finished = [], calls[0]["start_s"]
        for c in calls:
            out.append(Call(c["prompts"], sum(c["generated"]), max(0.0, c["start_s"] - finished)))
            finished = c["start_s"] + c["seconds"]
        out[0].gap_s = 0.0
        requests.append(out)
    return requests


def blocks(prompt: list[int], size: int, salt: int, shared: int) -> list[bytes]:
    """The prompt's full blocks as chained hashes (a block names its whole prefix, as vLLM's). Tokens past the
    ``shared`` prefix every request has are salted per simulated request, so replays of one recorded request do
    not share what two distinct requests would not."""
    out, prev = [], b""
    for start in range(0, len(prompt) - size + 1, size):
        chunk = prompt[start : start + size]
        own = f"{salt}" if start + size > shared else ""
        prev = hashlib.blake2b(
            prev + own.encode() + np.asarray(chunk, dtype=np.int32).tobytes(), digest_size=8
        ).digest()
        out.append(prev)
    return out


class Fleet:
    def __init__(self, replicas: int, policy: str, args: argparse.Namespace, seed: int):
        self.r = [Replica() for _ in range(replicas)]
        self.policy, self.args = policy, args
        self.pins: dict[int, int] = {}
        self.next_rr = 0
        self.rng = random.Random(seed)
        ring = sorted((_h(f"replica-{i}-{v}"), i) for i in range(replicas) for v in range(100))
        self.ring_keys, self.ring_owner = [k for k, _ in ring], [i for _, i in ring]

    def _turn(self, i: int) -> int:
        """Ties rotate (as alignd's list of servers and vllm-router break them): an idle fleet spreads."""
        return (i - self.next_rr) % len(self.r)

    def route(self, session: int, first_prompt_blocks: list[bytes], first_tokens: list[int]) -> int:
        p, r = self.policy, self.r
        self.next_rr = (self.next_rr + 1) % len(r)
        if p == "round_robin":
            return self.next_rr
        if p == "least_loaded":
            return min(range(len(r)), key=lambda i: (r[i].queued_s, self._turn(i)))
        if p == "balancer":
            least = min(x.outstanding for x in r)
            tied = [i for i, x in enumerate(r) if x.outstanding == least]
            return tied[_h(json.dumps(first_tokens[:64])) % len(tied)]
        if p == "sticky":
            if session not in self.pins:
                self.pins[session] = min(range(len(r)), key=lambda i: (r[i].outstanding, self._turn(i)))
            return self.pins[session]
        if p == "consistent_hash":
            k = bisect.bisect(self.ring_keys, _h(f"session-{session}")) % len(self.ring_keys)
            return self.ring_owner[k]
        # cache_aware: the longest cached prefix, unless that replica is far busier than the least loaded
        least = min(range(len(r)), key=lambda i: (r[i].queued_s, self._turn(i)))
        matches = [_matched(x.cache, first_prompt_blocks) for x in r]
        best = max(range(len(r)), key=lambda i: (matches[i], -r[i].queued_s))
        share = matches[best] / max(1, len(first_prompt_blocks))
        overloaded = r[best].queued_s > 1.5 * r[least].queued_s + 2 * self.args.mean_call_s
        return best if share >= 0.5 and not overloaded else least


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _matched(cache: OrderedDict, hashes: list[bytes]) -> int:
    n = 0
    for h in hashes:
        if h not in cache:
            break
        n += 1
    return n


def simulate(
    requests: list[list[Call]],
    replicas: int,
    policy: str,
    args: argparse.Namespace,
    seed: int = 0,
    n_requests: int | None = None,
) -> dict:
    rng = random.Random(seed)
    fleet = Fleet(replicas, policy, args, seed)
    shared = _shared_prefix(requests)
    n_requests = n_requests or replicas * args.requests_per_replica
    mean_request_s = statistics.mean(
        sum(_service(c, sum(len(p) for p in c.prompts), args) for c in req) for req in requests
    )
    rate = replicas * args.load / mean_request_s  # arrivals per second: each replica busy `load` of the time
    events: list = []
    t = 0.0
    for j in range(n_requests):
        t += rng.expovariate(rate)
        heapq.heappush(events, (t, j, "arrive", j, 0))
    started: dict[int, float] = {}
    latencies: list[float] = []
    computed = total = 0
    seq = n_requests
    while events:
        now, _, kind, j, k = heapq.heappop(events)
        req = requests[j % len(requests)]
        if kind == "arrive":
            started[j] = now
            kind = "issue"
        if kind == "issue":
            call = req[k]
            hashes = [blocks(p, args.block_size, j, shared) for p in call.prompts]
            i = fleet.route(j, hashes[0], call.prompts[0])
            replica = fleet.r[i]
            # the call's prefill is what its prompts' longest cached prefixes leave, as the replica's cache holds
            # them when it starts serving; its service starts when the replica is free (first come, first served)
            begin = max(now, replica.busy_until)
            new = 0
            for h, prompt in zip(hashes, call.prompts):
                hit = _matched(replica.cache, h)
                new += len(prompt) - hit * args.block_size
                for block in h:
                    replica.cache[block] = None
                    replica.cache.move_to_end(block)
                while len(replica.cache) > args.cache_blocks:
                    replica.cache.popitem(last=False)
            tokens = sum(len(p) for p in call.prompts)
            computed += new
            total += tokens
            service = _service(call, new, args)
            replica.busy_until = begin + service
            replica.work_s += service
            replica.outstanding += 1
            replica.queued_s += service
            seq += 1
            heapq.heappush(events, (begin + service, seq, "done", j, k * 1000 + i))
            continue
        # done: the replica frees the call; the request's next call follows after its gap, or it ends
        k, i = divmod(k, 1000)
        replica = fleet.r[i]
        replica.outstanding -= 1
        replica.queued_s = max(0.0, replica.busy_until - now)
        if k + 1 < len(req):
            seq += 1
            heapq.heappush(events, (now + req[k + 1].gap_s, seq, "issue", j, k + 1))
        else:
            latencies.append(now - started[j])
    work = [x.work_s for x in fleet.r]
    return {
        "computed": computed,
        "prompt_tokens": total,
        "hit_rate": 1 - computed / total,
        "p50_s": float(np.percentile(latencies, 50)),
        "p99_s": float(np.percentile(latencies, 99)),
        "imbalance": max(work) / statistics.mean(work),
    }


def _service(call: Call, computed: int, args: argparse.Namespace) -> float:
    return computed / args.prefill_rate + call.generated / args.decode_rate


def _shared_prefix(requests: list[list[Call]]) -> int:
    """How many leading tokens every recorded request's first prompt has in common (the system message)."""
    firsts = [req[0].prompts[0] for req in requests]
    n = 0
    while all(len(p) > n for p in firsts) and len({p[n] for p in firsts}) == 1:
        n += 1
    return n


def calibrate(path: Path) -> tuple[float, float]:
    """Prefill and decode rates (tokens/s) fitted to the recorded calls: seconds ~ computed/p + generated/d."""
    rows = records(path)
    x = np.array([[sum(map(len, r["prompts"])) - sum(r["cached"]), sum(r["generated"])] for r in rows], float)
    y = np.array([r["seconds"] for r in rows])
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    return 1 / max(a, 1e-9), 1 / max(b, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, default=ROOT / "results" / "fleet_trace.jsonl")
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 4, 16, 64])
    parser.add_argument("--requests-per-replica", type=int, default=64)
    parser.add_argument("--load", type=float, default=0.7, help="the share of its time each replica is busy")
    parser.add_argument("--block-size", type=int, default=16, help="vLLM's default on GPU")
    parser.add_argument("--cache-blocks", type=int, default=16384, help="per replica (262,144 tokens)")
    parser.add_argument("--prefill-rate", type=float, default=20000.0, help="tokens/s per replica (GPU assumption)")
    parser.add_argument("--decode-rate", type=float, default=2500.0, help="tokens/s per replica (GPU assumption)")
    parser.add_argument("--calibrate", action="store_true", help="fit both rates to the recorded CPU calls")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fleet_sim.json")
    args = parser.parse_args()
    if args.calibrate:
        args.prefill_rate, args.decode_rate = calibrate(args.trace)
    requests = load_trace(args.trace)
    args.mean_call_s = statistics.mean(
        _service(c, sum(len(p) for p in c.prompts), args) for req in requests for c in req
    )
    rows = []
    for replicas in args.replicas:
        n = replicas * args.requests_per_replica
        floor = simulate(requests, 1, "sticky", _one_replica(args), 0, n_requests=n)["computed"]
        for policy in POLICIES:
            row = {"replicas": replicas, "policy": policy, **simulate(requests, replicas, policy, args)}
            row["computed_vs_floor"] = row["computed"] / floor
            rows.append(row)
    settings = {k: v for k, v in vars(args).items() if k not in ("trace", "out")}
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2, default=str) + "\n")
    print(f"prefill {args.prefill_rate:,.0f} tok/s, decode {args.decode_rate:,.0f} tok/s per replica")
    print("| replicas | routing | computed prefill vs floor | hit rate | p50 (s) | p99 (s) | imbalance |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['replicas']} | {r['policy']} | {r['computed_vs_floor']:.2f}x | {r['hit_rate']:.0%} | "
            f"{r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['imbalance']:.2f} |"
        )


def _one_replica(args: argparse.Namespace) -> argparse.Namespace:
    """The floor: every request on one replica whose cache never evicts (no routing computes less prefill)."""
    floor = argparse.Namespace(**vars(args))
    floor.cache_blocks = 1 << 40
    return floor


if __name__ == "__main__":
    main()
