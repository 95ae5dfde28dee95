"""ctrl: hand-computed calibration on the scripted engine; on real vLLM, agreement with best_of_n, the N/(N+1)
law for the calibrated reward of the best-of-N pick, the reference cache and adaptive-N thresholds."""

from __future__ import annotations

import asyncio
import math

import pytest

from alignd.decoders import DecodeContext, DecodeRequest
from alignd.decoders.best_of_n import BestOfN
from alignd.decoders.ctrl import CTRL, CTRLParams, ReferenceCache, transform
from alignd.engines.protocol import SamplingConfig
from alignd.rewards import RewardSet, RewardTerm, build_reward
from alignd.rewards.scoring import calibrate

from scripted_engine import ScriptedEngine


def _length(weight=1.0, name="len") -> RewardTerm:
    return RewardTerm(build_reward(name, {"type": "length", "unit": "chars"}), weight)


def _request(engine, prompt="ab", n=1, seed=None, max_tokens=8) -> DecodeRequest:
    return DecodeRequest(
        "ctrl-1", engine.tokenizer.encode(prompt), prompt, SamplingConfig(max_tokens=max_tokens, seed=seed), n
    )


def test_calibration_is_the_empirical_cdf_with_half_ties():
    refs = [1.0, 2.0, 2.0, 5.0]
    assert [calibrate(v, refs) for v in (0.0, 1.0, 2.0, 3.0, 9.0)] == [0.0, 0.125, 0.5, 0.75, 1.0]
    assert transform(0.5, "exp", 2.0) == pytest.approx(math.e)
    assert transform(0.5, "neg_exp", 2.0) == pytest.approx(-1 / math.e)


async def test_scripted_calibrated_scores_and_transforms():
    # References and candidates both come from the script: K = 4 references of lengths 1..4, candidates "a", "ab",
    # "abc" (lengths 1, 2, 3) -> C = 0.5/4, 1.5/4, 2.5/4.
    engine = ScriptedEngine(samples=["a", "ab", "abc", "abcd"])
    decoder = CTRL(CTRLParams(num_candidates=3, reference_samples=4), cache=ReferenceCache())
    result = await decoder.decode(_request(engine), DecodeContext(engine, RewardSet([_length()])))
    assert [c.calibrated for c in result.candidates] == [0.125, 0.375, 0.625]
    assert [c.score for c in result.candidates] == pytest.approx([math.exp(c) for c in (0.125, 0.375, 0.625)])
    assert result.choices[0].text == "abc"
    assert [call.params.n for call in engine.calls] == [4, 3]  # one reference call, one candidate call
    assert result.usage.reward_calls == 2 and result.usage.candidates_scored == 7
    # Every transform is increasing in C, so argmax is unchanged; neg_exp differs under select=sample.
    for kind in ("identity", "neg_exp"):
        other = CTRL(CTRLParams(num_candidates=3, reference_samples=4, transform=kind), cache=ReferenceCache())
        result = await other.decode(_request(engine), DecodeContext(engine, RewardSet([_length()])))
        assert result.choices[0].text == "abc"
        assert result.choices[0].score == pytest.approx(transform(0.625, kind, 1.0))


async def test_leave_one_out_and_two_rewards_on_one_scale():
    engine = ScriptedEngine(samples=["a", "abcd", "ab"])
    kw = RewardTerm(build_reward("kw", {"type": "keywords", "keywords": ["a"]}), 3.0)
    decoder = CTRL(CTRLParams(num_candidates=3, calibration="leave_one_out", transform="identity"))
    result = await decoder.decode(_request(engine), DecodeContext(engine, RewardSet([_length(), kw])))
    # length C vs the other two: "a" 0/2, "abcd" 2/2, "ab" 1/2. Keyword "a" (whole word) only in "a": raw
    # [1, 0, 0] -> C = 2/2, 0.5/2, 0.5/2. Weighted mean with weights 1 and 3.
    expected = [(1 * lc + 3 * kc) / 4 for lc, kc in ((0.0, 1.0), (1.0, 0.25), (0.5, 0.25))]
    assert [c.calibrated for c in result.candidates] == pytest.approx(expected)
    assert result.choices[0].text == "a"  # raw length alone would pick "abcd"
    assert len(engine.calls) == 1  # leave-one-out draws no references


async def test_repeated_prompt_draws_no_new_references():
    engine = ScriptedEngine(samples=["a", "ab", "abc"])
    cache = ReferenceCache()
    decoder = CTRL(CTRLParams(num_candidates=2, reference_samples=3), cache=cache)
    rewards = RewardSet([_length()])
    await decoder.decode(_request(engine), DecodeContext(engine, rewards))
    second = await decoder.decode(_request(engine), DecodeContext(engine, rewards))
    assert (cache.misses, cache.hits) == (1, 1)
    assert second.usage.engine_calls == 1 and len(engine.calls) == 3


async def test_sample_selection_with_tiny_beta_is_argmax():
    engine = ScriptedEngine(samples=["a", "abc", "ab"])
    params = dict(num_candidates=3, reference_samples=3, select="sample", beta=1e-4)
    result = await CTRL(CTRLParams(**params), cache=ReferenceCache()).decode(
        _request(engine, seed=1), DecodeContext(engine, RewardSet([_length()]))
    )
    assert result.choices[0].text == "abc"


async def test_argmax_equals_best_of_n_for_the_same_seed(vllm_engine, tiny_classifier):
    rm = build_reward("rm", {"type": "classifier", "path": str(tiny_classifier)})
    await rm.start()
    rewards = RewardSet([RewardTerm(rm)])
    tok = vllm_engine.tokenizer
    for i in range(5):
        prompt = f"Tell me about the sea {i}"
        req = DecodeRequest(f"eq-{i}", tok.encode(prompt), prompt, SamplingConfig(max_tokens=8, seed=100 + i))
        bon = await BestOfN(BestOfN.Params(num_candidates=6)).decode(req, DecodeContext(vllm_engine, rewards))
        ctrl = await CTRL(CTRLParams(num_candidates=6, reference_samples=16), cache=ReferenceCache()).decode(
            req, DecodeContext(vllm_engine, rewards)
        )
        assert [c.text for c in ctrl.candidates] == [c.text for c in bon.candidates]
        assert ctrl.choices[0].index == bon.choices[0].index


async def test_calibrated_reward_of_best_of_n_approaches_n_over_n_plus_one(vllm_engine, tiny_classifier):
    """E[C(best of N)] = P(reference < max of N) = N/(N+1) = 0.8 for N = 4."""
    rm = build_reward("rm", {"type": "classifier", "path": str(tiny_classifier)})
    await rm.start()
    rewards = RewardSet([RewardTerm(rm)])
    tok = vllm_engine.tokenizer
    prompts, n = 100, 4
    decoder = CTRL(CTRLParams(num_candidates=n, reference_samples=32, transform="identity"), cache=ReferenceCache())

    async def one(i: int) -> float:
        prompt = f"Hello world number {i} says"
        req = DecodeRequest(f"law-{i}", tok.encode(prompt), prompt, SamplingConfig(max_tokens=8, seed=i))
        return (await decoder.decode(req, DecodeContext(vllm_engine, rewards))).choices[0].calibrated

    values = await asyncio.gather(*(one(i) for i in range(prompts)))
    mean = sum(values) / prompts
    # sd of C(best) <= sd of Beta(N, 1) (0.163) plus the K-sample noise of the CDF (<= 0.5/sqrt(32) = 0.088)
    tolerance = 4 * (0.163 + 0.088) / math.sqrt(prompts)
    assert abs(mean - n / (n + 1)) < tolerance, (mean, tolerance)


async def test_threshold_draws_fewer_than_max_and_says_whether_it_reached_tau(vllm_engine, tiny_classifier):
    rm = build_reward("rm", {"type": "classifier", "path": str(tiny_classifier)})
    await rm.start()
    rewards = RewardSet([RewardTerm(rm)])
    tok = vllm_engine.tokenizer
    params = CTRLParams(select="threshold", tau=0.8, round_size=2, max_candidates=12, reference_samples=16)
    decoder = CTRL(params, cache=ReferenceCache())
    drawn = []
    for i in range(20):
        prompt = f"Write a line {i}"
        req = DecodeRequest(f"thr-{i}", tok.encode(prompt), prompt, SamplingConfig(max_tokens=8, seed=i))
        result = await decoder.decode(req, DecodeContext(vllm_engine, rewards))
        drawn.append(len(result.candidates))
        reached = result.info["threshold_reached"]
        assert reached == (result.choices[0].calibrated >= 0.8)
        if not reached:
            assert len(result.candidates) == 12
    assert sum(drawn) / len(drawn) < 12
