"""deal, transfer_q and args: hand-computed searches on the scripted engine, greedy equivalences on real vLLM,
one engine call per step, and reward guidance that beats greedy decoding."""

from __future__ import annotations

import math

import pytest

from alignd.decoders import DecodeContext, DecodeRequest
from alignd.decoders.args import ARGS, ARGSParams
from alignd.decoders.deal import DeAL, DeALParams
from alignd.decoders.transfer_q import TransferQ, TransferQParams, q_values
from alignd.engines.protocol import SamplingConfig
from alignd.rewards import RewardSet, RewardTerm, Scores, build_reward

from scripted_engine import ScriptedEngine

# vocab "ab": 0 = EOS, 1 = "a", 2 = "b". After "a": a .5, b .45; otherwise a .6, b .35; EOS .05.
_ROOT = {1: math.log(0.6), 2: math.log(0.35), 0: math.log(0.05)}
_AFTER_A = {1: math.log(0.5), 2: math.log(0.45), 0: math.log(0.05)}


def _engine():
    return ScriptedEngine(vocab="ab", lm=lambda prefix: _AFTER_A if prefix and prefix[-1] == 1 else _ROOT)


def _has_b() -> RewardSet:
    return RewardSet([RewardTerm(build_reward("has_b", {"type": "regex", "pattern": "b"}))])


def _request(engine, max_tokens=2, prompt="b") -> DecodeRequest:
    return DecodeRequest("search", engine.tokenizer.encode(prompt), prompt, SamplingConfig(max_tokens=max_tokens))


async def test_deal_by_hand():
    # Step 1: "a"+lookahead "a" -> "aa" (h 0): log .6 = -0.51; "b"+"a" -> "ba" (h 1): log .35 + 1 = -0.05 -> b.
    # Step 2 (no room for lookahead): "ba" log(.35*.6)+1 beats "bb" log(.35*.35)+1 -> "ba". Greedy says "aa".
    engine = _engine()
    params = DeALParams(top_k=2, lookahead=1, weight=1.0)
    result = await DeAL(params).decode(_request(engine), DecodeContext(engine, _has_b()))
    assert result.choices[0].text == "ba"
    assert result.choices[0].score == pytest.approx(math.log(0.35 * 0.6) + 1.0)
    # step 1: top-k + lookahead; step 2: top-k read from the lookahead, no lookahead left -> 2 engine calls
    assert result.usage.engine_calls == 2
    assert result.usage.reward_calls == 3  # one per step + the final answer's reward
    greedy = await DeAL(DeALParams(top_k=2, lookahead=1, weight=0.0)).decode(
        _request(engine), DecodeContext(engine, _has_b())
    )
    assert greedy.choices[0].text == "aa"


async def test_deal_segment_commit_takes_the_whole_lookahead():
    engine = _engine()
    params = DeALParams(top_k=2, lookahead=2, weight=1.0, commit="segment")
    result = await DeAL(params).decode(_request(engine, max_tokens=3), DecodeContext(engine, _has_b()))
    assert result.choices[0].text == "baa"  # "b" + greedy lookahead "aa", committed in one step
    assert result.info["steps"] == 1


async def test_transfer_q_and_args_by_hand():
    engine = _engine()
    tq = TransferQ(TransferQParams(top_k=2, rollout_tokens=1, rollout_temperature=0.0, alpha=1.0))
    result = await tq.decode(_request(engine), DecodeContext(engine, _has_b()))
    assert result.choices[0].text == "ba"
    huge_alpha = TransferQ(TransferQParams(top_k=2, rollout_tokens=1, rollout_temperature=0.0, alpha=1e9))
    assert (await huge_alpha.decode(_request(engine), DecodeContext(engine, _has_b()))).choices[0].text == "aa"
    # ARGS, w = 1: "a" (h 0) -0.51 vs "b" (h 1) log .35 + 1 = -0.05 -> b; then "ba" vs "bb" both h 1 -> a
    args = await ARGS(ARGSParams(top_k=2, weight=1.0)).decode(_request(engine), DecodeContext(engine, _has_b()))
    assert args.choices[0].text == "ba"
    args0 = await ARGS(ARGSParams(top_k=2, weight=0.0)).decode(_request(engine), DecodeContext(engine, _has_b()))
    assert args0.choices[0].text == "aa"


def test_indirect_transfer_correction_by_hand():
    scores = Scores(total=[0.0, 0.0], per_reward={"r": [2.0, 1.0], "r_bl": [1.0, 3.0]})
    params = TransferQParams(baseline_reward="r_bl", beta=0.5)
    q = q_values(scores, params, {"r": 1.0, "r_bl": 1.0})
    assert q == pytest.approx([math.exp(0.5 * 1.0) * 2.0, math.exp(0.5 * -2.0) * 1.0])


PROMPTS = ["The quick brown fox", "Hello world", "Paris is the capital of", "One two three four"]


async def _greedy(engine, prompt_ids, max_tokens):
    [gen] = await engine.generate([prompt_ids], SamplingConfig(max_tokens=max_tokens, temperature=0.0), "greedy")
    return gen.completions[0].token_ids


@pytest.mark.parametrize(
    "decoder",
    [
        DeAL(DeALParams(top_k=1, lookahead=4)),
        DeAL(DeALParams(top_k=10, lookahead=4, weight=0.0)),
        TransferQ(TransferQParams(top_k=1, rollout_tokens=4)),
        TransferQ(TransferQParams(top_k=10, rollout_tokens=4, alpha=1e9)),
        ARGS(ARGSParams(top_k=10, weight=0.0)),
    ],
    ids=["deal-k1", "deal-lambda0", "tq-k1", "tq-alpha-huge", "args-w0"],
)
async def test_degenerate_settings_reproduce_greedy_decoding(vllm_engine, tiny_classifier, decoder):
    rm = build_reward("rm", {"type": "classifier", "path": str(tiny_classifier)})
    rewards = RewardSet([RewardTerm(rm)])
    tok = vllm_engine.tokenizer
    for i, prompt in enumerate(PROMPTS[:2]):
        ids = tok.encode(prompt)
        req = DecodeRequest(f"g-{i}", ids, prompt, SamplingConfig(max_tokens=10))
        result = await decoder.decode(req, DecodeContext(vllm_engine, rewards))
        assert result.choices[0].token_ids == await _greedy(vllm_engine, ids, 10)


async def test_deal_costs_one_engine_call_per_step(vllm_engine):
    rewards = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
    tok = vllm_engine.tokenizer
    req = DecodeRequest("calls", tok.encode("Hello"), "Hello", SamplingConfig(max_tokens=12))
    result = await DeAL(DeALParams(top_k=8, lookahead=6)).decode(req, DecodeContext(vllm_engine, rewards))
    steps = result.info["steps"]
    assert result.usage.engine_calls <= steps + 1  # the first top-k, then one batched lookahead call per step
    assert result.usage.reward_calls == steps + 1
    assert result.usage.engine_requests >= 8 * (steps - 1)  # k lookaheads per step went in those calls


async def test_reward_guidance_beats_greedy_on_the_real_engine(vllm_engine, tiny_classifier):
    rm = build_reward("rm", {"type": "classifier", "path": str(tiny_classifier)})
    await rm.start()
    rewards = RewardSet([RewardTerm(rm)])
    tok = vllm_engine.tokenizer
    tq = TransferQ(TransferQParams(top_k=6, rollout_tokens=6, rollout_temperature=0.0, alpha=0.05))
    deal = DeAL(DeALParams(top_k=6, lookahead=6, weight=20.0))
    greedy_scores, tq_scores, deal_scores = [], [], []
    for i, prompt in enumerate(PROMPTS):
        ids = tok.encode(prompt)
        greedy_text = tok.decode(await _greedy(vllm_engine, ids, 10))
        greedy_scores.append((await rewards.score(prompt, [greedy_text])).total[0])
        req = DecodeRequest(f"guided-{i}", ids, prompt, SamplingConfig(max_tokens=10, seed=i))
        tq_scores.append((await tq.decode(req, DecodeContext(vllm_engine, rewards))).choices[0].reward)
        deal_scores.append((await deal.decode(req, DecodeContext(vllm_engine, rewards))).choices[0].reward)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(tq_scores) > mean(greedy_scores)
    assert mean(deal_scores) > mean(greedy_scores)


async def test_streaming_yields_committed_tokens_then_the_result(vllm_engine):
    rewards = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
    tok = vllm_engine.tokenizer
    req = DecodeRequest("stream", tok.encode("Hello"), "Hello", SamplingConfig(max_tokens=6))
    events = [e async for e in DeAL(DeALParams(top_k=3, lookahead=2)).stream(req, DecodeContext(vllm_engine, rewards))]
    deltas, result = events[:-1], events[-1]
    assert [t for d in deltas for t in d.token_ids] == result.choices[0].token_ids
    assert len(deltas) >= 2 and deltas[-1].finish_reason is not None
