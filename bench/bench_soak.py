"""Soak: the server on the default model under a bounded mixed load for ten minutes (the suite runs one minute).

Four client threads on loopback cycle through every decoder (sample, streamed chat, best_of_n, ctrl, a streamed
DeAL search, transfer_q, args, diverse_beam, urial), a stream its client abandons after the first event, and two
bad requests (400, 404). Reported: requests served, latency per kind, the resident memory of the server's
whole process group (the API process, vLLM's engine core and, on a GPU host, its workers) sampled every 5 s,
its growth after the first third of the run, and whether ``alignd_requests_total`` equals the client's own
counts.

Run: ``python bench/bench_soak.py [--minutes 10]``; results in ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))


def main(args: argparse.Namespace) -> dict:
    from soak import mix, server_counts, soak

    from alignd.engines.models import DEFAULT_MODEL, prepare_default_model

    from serverproc import start_server, stop_server, wait_idle

    prepare_default_model()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server({}, Path(tmp))  # the shipped defaults: default model, default rewards
        try:
            requests = mix(DEFAULT_MODEL, "length")
            soak(server, requests, seconds=20, threads=1)  # warm every path
            wait_idle(server, within_s=30)
            before = server_counts(server)
            seconds = args.minutes * 60
            result = soak(server, requests, seconds=seconds, threads=args.threads, sample_every_s=5)
            wait_idle(server, within_s=30)
            after = server_counts(server)
        finally:
            stop_server(server)
    recorded = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    steady = result.rss_after(seconds / 3)
    out = {
        "minutes": args.minutes,
        "threads": args.threads,
        "requests": result.requests,
        "unexpected": result.unexpected[:20],
        "metrics_equal_client_counts": recorded == dict(result.counts),
        "rss_mib": {
            "start": result.rss[0][1],
            "after_warmup": steady[0],
            "end": result.rss[-1][1],
            "max_after_warmup": max(steady),
            "growth_after_warmup": result.growth_after(seconds / 3),
            "peak_over_warmup": max(steady) - steady[0],
        },
        "rss_samples": [[round(t, 1), round(m, 1)] for t, m in result.rss],
        "latency_median_s": {name: round(statistics.median(v), 3) for name, v in sorted(result.latency.items())},
        "served_per_kind": {name: len(v) for name, v in sorted(result.latency.items())},
    }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "soak.json")
    result = main(parser.parse_args())
    parser.parse_args().out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=2))
