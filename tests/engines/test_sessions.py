"""One session, one replica: every engine call a decode causes, its rewards' calls included, carries the request's
session, so an engine with several replicas can keep them on one (the engine layer's contract; the replicas
themselves are checked on real vLLM and vllm-router in tests/engines/test_fleet.py)."""

from __future__ import annotations

import math

from alignd.decoders import DecodeContext, DecodeRequest
from alignd.decoders.deal import DeAL, DeALParams
from alignd.engines.metering import MeteredEngine
from alignd.engines.protocol import SamplingConfig
from alignd.rewards import RewardContext, RewardSet, RewardTerm, build_reward

from scripted_engine import ScriptedEngine

_LM = {1: math.log(0.6), 2: math.log(0.35), 0: math.log(0.05)}


def _deal_on(engine: ScriptedEngine, session: str | None):
    # the DPO implicit reward runs on an engine, as a judge does: built once, shared by requests, metered ambiently
    shared = MeteredEngine(engine)
    implicit = build_reward("dpo", {"type": "implicit", "policy": "m", "reference": "m"}, RewardContext({"m": shared}))
    rewards = RewardSet([RewardTerm(implicit), RewardTerm(build_reward("b", {"type": "regex", "pattern": "b"}))])
    request = DecodeRequest("req-7", engine.tokenizer.encode("b"), "b", SamplingConfig(max_tokens=3))
    return DeAL(DeALParams(top_k=2, lookahead=1)).decode(request, DecodeContext(engine, rewards, session=session))


async def test_every_engine_call_of_a_request_carries_its_session():
    engine = ScriptedEngine(vocab="ab", lm=lambda prefix: _LM)
    result = await _deal_on(engine, "chatcmpl-7")
    methods = {c.method for c in engine.calls}
    assert methods == {"generate", "continuation_logprobs"}  # the decoder's steps, the reward's log-probs
    assert {c.session for c in engine.calls} == {"chatcmpl-7"}
    assert result.usage.engine.by_source.keys() == {"decoder", "reward:dpo"}


async def test_without_a_session_no_call_invents_one():
    engine = ScriptedEngine(vocab="ab", lm=lambda prefix: _LM)
    await _deal_on(engine, None)
    assert engine.calls and {c.session for c in engine.calls} == {None}
