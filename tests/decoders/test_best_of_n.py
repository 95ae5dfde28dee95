"""best_of_n: hand-computed picks on the scripted engine, the same contract on real vLLM, and the N/(N+1) law."""

from __future__ import annotations

import asyncio
import math

import pytest

from alignd.decoders import DecodeContext, DecodeRequest, DecoderError
from alignd.decoders.best_of_n import BestOfN
from alignd.engines.protocol import SamplingConfig
from alignd.rewards import Reward, RewardParams, RewardSet, RewardTerm, build_reward

from scripted_engine import ScriptedEngine


def _request(engine, prompt="ab", n=1, **sampling) -> DecodeRequest:
    return DecodeRequest(
        request_id="req-1",
        prompt_token_ids=engine.tokenizer.encode(prompt),
        prompt=prompt,
        sampling=SamplingConfig(max_tokens=sampling.pop("max_tokens", 8), **sampling),
        n=n,
    )


def _length_rewards(**params) -> RewardSet:
    return RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars", **params}))])


async def test_picks_argmax_with_one_engine_call_and_one_reward_call():
    engine = ScriptedEngine(samples=["ab", "abcd", "a", "abc"])
    ctx = DecodeContext(engine, _length_rewards())
    result = await BestOfN(BestOfN.Params(num_candidates=4)).decode(_request(engine), ctx)
    assert [c.text for c in result.choices] == ["abcd"]
    assert result.choices[0].reward == 4.0
    assert [c.reward for c in result.candidates] == [2.0, 4.0, 1.0, 3.0]
    assert len(engine.calls) == 1 and engine.calls[0].params.n == 4
    assert result.usage.engine_calls == 1 and result.usage.reward_calls == 1
    assert result.usage.candidates_scored == 4
    assert result.usage.engine_completion_tokens == 10


async def test_ties_go_to_the_lowest_index_and_n_returns_ranked():
    engine = ScriptedEngine(samples=["ab", "cd", "abc", "efg"])
    ctx = DecodeContext(engine, _length_rewards())
    result = await BestOfN(BestOfN.Params(num_candidates=4)).decode(_request(engine, n=3), ctx)
    assert [c.text for c in result.choices] == ["abc", "efg", "ab"]
    assert [c.index for c in result.choices] == [2, 3, 0]


async def test_soft_best_of_n_picks_in_proportion_to_exp_reward_over_beta():
    # rewards 1, 2, 3 (lengths); beta = 1: P = e^r / (e + e^2 + e^3) = 0.090, 0.245, 0.665
    counts = {"a": 0, "ab": 0, "abc": 0}
    for seed in range(600):
        engine = ScriptedEngine(samples=["a", "ab", "abc"])
        ctx = DecodeContext(engine, _length_rewards())
        result = await BestOfN(BestOfN.Params(num_candidates=3, beta=1.0)).decode(_request(engine, seed=seed), ctx)
        counts[result.choices[0].text] += 1
    z = math.e + math.e**2 + math.e**3
    for text, r in (("a", 1), ("ab", 2), ("abc", 3)):
        p = math.exp(r) / z
        assert abs(counts[text] / 600 - p) < 4 * math.sqrt(p * (1 - p) / 600), counts
    # beta -> 0 is best-of-N; a huge beta is a uniform draw among the candidates
    engine = ScriptedEngine(samples=["a", "ab", "abc"])
    sharp = await BestOfN(BestOfN.Params(num_candidates=3, beta=1e-3)).decode(
        _request(engine, seed=1), DecodeContext(engine, _length_rewards())
    )
    assert sharp.choices[0].text == "abc"
    picks = set()
    for seed in range(40):
        engine = ScriptedEngine(samples=["a", "ab", "abc"])
        flat = await BestOfN(BestOfN.Params(num_candidates=3, beta=1000.0)).decode(
            _request(engine, seed=seed), DecodeContext(engine, _length_rewards())
        )
        picks.add(flat.choices[0].text)
    assert picks == {"a", "ab", "abc"}


async def test_nan_reward_drops_the_candidate_under_drop_policy():
    class Flaky(Reward):
        kind = "flaky"

        async def score(self, prompt, completions):
            return [math.nan if c == "abcd" else float(len(c)) for c in completions]

    flaky = Flaky("flaky", RewardParams(type="flaky", on_error="drop"), None)
    engine = ScriptedEngine(samples=["ab", "abcd", "a"])
    ctx = DecodeContext(engine, RewardSet([RewardTerm(flaky)]))
    result = await BestOfN(BestOfN.Params(num_candidates=3)).decode(_request(engine), ctx)
    assert result.choices[0].text == "ab"
    assert result.candidates[1].dropped == "reward 'flaky' returned NaN"


async def test_needs_a_reward_and_enough_candidates():
    engine = ScriptedEngine(samples=["a"])
    with pytest.raises(DecoderError) as err:
        await BestOfN().decode(_request(engine), DecodeContext(engine, None))
    assert err.value.param == "reward"
    with pytest.raises(DecoderError) as err:
        await BestOfN(BestOfN.Params(num_candidates=2)).decode(
            _request(engine, n=3), DecodeContext(engine, _length_rewards())
        )
    assert err.value.param == "n"


async def test_real_vllm_one_call_argmax_and_seed_reproducible(vllm_engine):
    tok = vllm_engine.tokenizer
    prompt = "The quick brown fox"
    req = DecodeRequest("bon-real", tok.encode(prompt), prompt, SamplingConfig(max_tokens=12, seed=7, temperature=1.0))
    decoder = BestOfN(BestOfN.Params(num_candidates=6))
    ctx = DecodeContext(vllm_engine, _length_rewards())
    result = await decoder.decode(req, ctx)
    rewards = [c.reward for c in result.candidates]
    assert len(result.candidates) == 6
    assert result.choices[0].reward == max(rewards)
    assert result.choices[0].index == rewards.index(max(rewards))
    assert all(c.reward == float(len(c.text)) for c in result.candidates)
    assert result.usage.engine_calls == 1
    # one prompt prefilled once: prompt tokens are counted once, not six times
    assert result.usage.engine_prompt_tokens == len(req.prompt_token_ids)
    again = await decoder.decode(
        DecodeRequest("bon-real-2", req.prompt_token_ids, prompt, req.sampling),
        DecodeContext(vllm_engine, _length_rewards()),
    )
    assert [c.text for c in again.candidates] == [c.text for c in result.candidates]


async def test_win_rate_against_a_fresh_sample_is_n_over_n_plus_one(vllm_engine, tiny_classifier):
    """P(best-of-N beats an independent sample) = N/(N+1) = 0.8 for N=4 (ties broken uniformly at random)."""
    reward = build_reward("rm", {"type": "classifier", "path": str(tiny_classifier)})
    await reward.start()
    rewards = RewardSet([RewardTerm(reward)])
    tok = vllm_engine.tokenizer
    trials, n = 300, 4
    prompts = [f"Hello world {i} how are you" for i in range(trials)]
    decoder = BestOfN(BestOfN.Params(num_candidates=n))
    params = SamplingConfig(max_tokens=8, temperature=1.0)

    async def trial(i: int) -> float:
        ids = tok.encode(prompts[i])
        best = await decoder.decode(
            DecodeRequest(f"win-{i}", ids, prompts[i], params.but(seed=2 * i)), DecodeContext(vllm_engine, rewards)
        )
        [fresh] = await vllm_engine.generate([ids], params.but(seed=2 * i + 1), f"fresh-{i}")
        [r_fresh] = (await rewards.score(prompts[i], [fresh.completions[0].text])).total
        pick = best.choices[0].reward
        if r_fresh < pick:
            return 1.0
        if r_fresh > pick:
            return 0.0
        # Equal rewards (identical texts from a peaked tiny model): under a uniformly random tie-break the fresh
        # sample tops the k tied values with probability 1/k, which keeps the N/(N+1) law exact.
        k = 1 + sum(1 for c in best.candidates if c.reward == pick)
        return 1.0 - 1.0 / k

    wins = await asyncio.gather(*(trial(i) for i in range(trials)))
    rate = sum(wins) / trials
    expected = n / (n + 1)
    tolerance = 4 * math.sqrt(expected * (1 - expected) / trials)  # 4 standard errors: ~0.09
    assert abs(rate - expected) < tolerance, (rate, expected, tolerance)
