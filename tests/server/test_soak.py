"""A short soak in the suite (the ten-minute one is bench/bench_soak.py): a minute of every decoder, streaming
and not, some requests cancelled, some bad, from four clients at once; resident memory stays flat after the
warm-up and /metrics agrees with the client's own counts."""

from __future__ import annotations

import os

from soak import mix, server_counts, soak

from serverproc import wait_idle

SOAK_SECONDS = float(os.environ.get("ALIGND_SOAK_SECONDS", "60"))
RSS_GROWTH_MIB = 64.0
"""How much the server's process group may grow after the first third of the run (measured: see the README)."""


def test_soak_keeps_memory_flat_and_metrics_true(server):
    # warm every path once, so the growth measured is steady-state, not first-use allocation
    soak(server, mix("tiny", "length"), seconds=1, threads=1)
    assert wait_idle(server, within_s=10) == (0.0, 0.0)
    before = server_counts(server)
    result = soak(server, mix("tiny", "length"), seconds=SOAK_SECONDS, threads=4)
    assert wait_idle(server, within_s=10) == (0.0, 0.0)
    assert not result.unexpected, result.unexpected[:10]
    assert result.requests > 100
    after = server_counts(server)
    recorded = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert recorded == dict(result.counts)
    assert len(result.rss_after(SOAK_SECONDS / 3)) >= 6
    assert result.growth_after(SOAK_SECONDS / 3) < RSS_GROWTH_MIB, f"{result.rss}"
