"""Prometheus metrics, registered once per process in the default registry beside vLLM's own.

Served at ``GET /metrics`` together with vLLM's engine metrics (``vllm:prefix_cache_hits`` and friends).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from ..decoders import DecodeResult, decoder_registry
from ..engines.registry import engine_registry

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600)

REQUESTS = Counter(
    "alignd_requests",
    "Generation and scoring requests finished, by route, decoder and final status (a stream's error event, or "
    "499 when the client left, counts as its status).",
    ["route", "decoder", "status"],
)
LATENCY = Histogram(
    "alignd_request_latency_seconds",
    "Wall time of requests from admission to the last byte.",
    ["route", "decoder"],
    buckets=_LATENCY_BUCKETS,
)
RUNNING = Gauge("alignd_requests_running", "Generation requests being served now.")
REJECTED = Counter("alignd_requests_rejected", "Requests refused at admission because the server was full.")
CANDIDATES = Counter("alignd_candidates_scored", "Candidates scored by rewards, by decoder.", ["decoder"])
ENGINE_TOKENS = Counter(
    "alignd_engine_tokens",
    "Tokens the engine processed for requests (prompt, completion, cached prompt), by decoder and by source: the "
    "decoder's own work or a reward's (reward:<name>, e.g. a judge's verdicts).",
    ["decoder", "source", "kind"],
)
ENGINE_CALLS = Counter(
    "alignd_engine_calls", "Batched engine calls made for requests, by decoder and source.", ["decoder", "source"]
)
REWARD_LATENCY = Histogram(
    "alignd_reward_latency_seconds",
    "Wall time of reward score calls, by reward.",
    ["reward"],
    buckets=_LATENCY_BUCKETS,
)
REWARD_FAILURES = Counter("alignd_reward_failures", "Reward calls that failed, by reward.", ["reward"])
CALLS_PER_STEP = Histogram(
    "alignd_engine_calls_per_step",
    "Engine calls per committed step of the token-level search decoders.",
    ["decoder"],
    buckets=(0.5, 1, 1.5, 2, 3, 5, 10, 20, 50),
)


_REWARD_BUCKETS = (-100, -30, -10, -5, -3, -2, -1, -0.5, -0.25, -0.1, 0, 0.1, 0.25, 0.5, 0.75, 0.9, 1, 2, 5, 10, 100)
CHOSEN_REWARD = Histogram(
    "alignd_chosen_reward",
    "Raw score of the answer a decode returned (its first choice), by decoder and reward.",
    ["decoder", "reward"],
    buckets=_REWARD_BUCKETS,
)
CHOSEN_MARGIN = Histogram(
    "alignd_chosen_reward_margin",
    "The returned answer's raw score minus the mean score of every candidate the decode weighed, by decoder and "
    "reward: what the search bought over its own candidates.",
    ["decoder", "reward"],
    buckets=_REWARD_BUCKETS,
)
CANDIDATES_PER_REQUEST = Histogram(
    "alignd_candidates_per_request",
    "Candidates one decode weighed (samples, beams, finished search paths), by decoder.",
    ["decoder"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
)
ENGINE_TOKENS_PER_REQUEST = Histogram(
    "alignd_engine_tokens_per_request",
    "Engine tokens (prompt + completion, the rewards' engine work included) one decode cost, by decoder.",
    ["decoder"],
    buckets=(16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576),
)


def observe_decode(decoder: str, result: DecodeResult) -> None:
    """Record the work one decode spent and what it chose."""
    u = result.usage
    CANDIDATES_PER_REQUEST.labels(decoder).observe(len(result.candidates))
    ENGINE_TOKENS_PER_REQUEST.labels(decoder).observe(u.engine_tokens)
    if result.choices:
        for name, value in result.choices[0].rewards.items():
            if value is None:
                continue
            CHOSEN_REWARD.labels(decoder, name).observe(value)
            scored = [c.rewards.get(name) for c in result.candidates]
            scored = [v for v in scored if v is not None]
            if scored:
                CHOSEN_MARGIN.labels(decoder, name).observe(value - sum(scored) / len(scored))
    CANDIDATES.labels(decoder).inc(u.candidates_scored)
    for source, work in u.engine.by_source.items():
        ENGINE_CALLS.labels(decoder, source).inc(work.calls)
        ENGINE_TOKENS.labels(decoder, source, "prompt").inc(work.prompt_tokens)
        ENGINE_TOKENS.labels(decoder, source, "completion").inc(work.completion_tokens)
        ENGINE_TOKENS.labels(decoder, source, "cached").inc(work.cached_tokens)
    for name, seconds in u.reward_seconds_by_name.items():
        REWARD_LATENCY.labels(name).observe(seconds)
    steps = result.info.get("steps")
    if steps:
        CALLS_PER_STEP.labels(decoder).observe(u.engine_calls / steps)


class _DecoderCollector:
    """Metrics that decoders publish themselves (CTRL's reference cache...), read from each on every scrape."""

    def collect(self):
        for cls in decoder_registry().values():
            yield from cls.collect_metrics()


REGISTRY.register(_DecoderCollector())


class _EngineCollector:
    """Metrics that engine adapters publish about their live engines (a remote fleet's servers...)."""

    def collect(self):
        for cls in engine_registry().values():
            yield from cls.collect_metrics()


REGISTRY.register(_EngineCollector())
