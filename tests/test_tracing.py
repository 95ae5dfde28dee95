"""Traces of a decode, read with the OpenTelemetry SDK's in-memory exporter: a search on the real vLLM engine (tiny
model) gives one span per engine call with its token counts, one per reward call, one per decoder round or step,
all in one trace under the span the server would open; with tracing off, nothing is recorded."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from alignd import tracing
from alignd.decoders import DecodeContext, DecodeRequest
from alignd.decoders.deal import DeAL, DeALParams
from alignd.engines.protocol import SamplingConfig
from alignd.rewards import RewardSet, RewardTerm, build_reward


@pytest.fixture
def exporter():
    spans = InMemorySpanExporter()
    tracing.configure(None, exporter=spans)
    yield spans
    tracing.shutdown()


async def _deal(engine) -> tuple:
    rewards = RewardSet([RewardTerm(build_reward("kw", {"type": "keywords", "keywords": ["the"]}))])
    prompt = engine.tokenizer.encode("Once upon a time", add_special_tokens=True)
    request = DecodeRequest("trace-deal", prompt, "Once upon a time", SamplingConfig(max_tokens=5, temperature=0.0))
    ctx = DecodeContext(engine, rewards)
    with tracing.span("request") as root:
        ctx.trace_parent = root  # as the server's decode span
        result = await DeAL(DeALParams(top_k=3, lookahead=2)).decode(request, ctx)
    return result, root


async def test_a_search_traces_every_engine_and_reward_call(vllm_engine, exporter):
    result, root = await _deal(vllm_engine)
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    engine = [s for s in spans if s.name.startswith("engine.")]
    usage = result.usage
    assert len(engine) == usage.engine_calls >= result.info["steps"]  # a lookahead call a step, and top-k calls
    for key, total in (
        ("prompt_tokens", usage.engine_prompt_tokens),
        ("completion_tokens", usage.engine_completion_tokens),
        ("cached_tokens", usage.engine_cached_tokens),
    ):
        assert sum(s.attributes[f"alignd.{key}"] for s in engine) == total, key
    assert all(s.attributes["alignd.source"] == "decoder" and s.attributes["alignd.model"] == "tiny" for s in engine)
    assert len([s for s in spans if s.name == "reward.score"]) == usage.reward_calls
    by_id = {s.context.span_id: s for s in spans}
    # every engine call hangs under the decoder phase it was made in, every phase under the request
    assert {by_id[s.parent.span_id].name for s in engine} <= {"decoder.expand", "decoder.lookahead"}
    phases = [s for s in spans if s.name.startswith("decoder.")]
    assert phases and all(s.parent.span_id == root.context.span_id for s in phases)


async def test_without_tracing_nothing_is_recorded(vllm_engine):
    spans = InMemorySpanExporter()
    assert not tracing.enabled()
    await _deal(vllm_engine)
    assert spans.get_finished_spans() == ()
    assert tracing.inject({"x": "1"}) == {"x": "1"}
