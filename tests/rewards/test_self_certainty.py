"""Self-certainty by hand: exact where the engine returns the whole distribution, a lower bound where it returns
the top k, and read from a real engine in one batched call."""

from __future__ import annotations

import math

import pytest

from alignd.engines.protocol import SamplingConfig
from alignd.rewards.protocol import RewardContext
from alignd.rewards.self_certainty import SelfCertaintyParams, SelfCertaintyReward, self_certainty, token_self_certainty


def _kl_uniform(probs: list[float]) -> float:
    v = len(probs)
    return -sum(math.log(v * p) for p in probs) / v


def test_with_the_whole_vocabulary_it_is_the_exact_kl_from_uniform():
    probs = [0.5, 0.25, 0.125, 0.125]
    row = {i: math.log(p) for i, p in enumerate(probs)}
    assert token_self_certainty(row, 4) == pytest.approx(_kl_uniform(probs))
    assert token_self_certainty({i: math.log(0.25) for i in range(4)}, 4) == pytest.approx(0.0)


def test_top_k_spreads_the_rest_uniformly_and_never_overstates():
    probs = [0.6, 0.2, 0.15, 0.05]  # V = 4, the engine returns the top 2
    approx = token_self_certainty({0: math.log(0.6), 1: math.log(0.2)}, 4)
    # by hand: the other two share 0.2 as 0.1 each
    assert approx == pytest.approx(_kl_uniform([0.6, 0.2, 0.1, 0.1]))
    exact = _kl_uniform(probs)
    assert approx <= exact  # Jensen: a uniform tail maximises its sum of logs
    gap_bound = (2 / 4) * math.log(0.1 / 0.05)  # ((V - k) / V) log(q / p_min)
    assert exact - approx <= gap_bound + 1e-12


def test_the_answers_score_is_the_mean_over_its_positions():
    sure, unsure = {0: math.log(0.97)}, {0: math.log(0.4), 1: math.log(0.35)}
    v = 100
    assert self_certainty([sure, unsure, None], v) == pytest.approx(
        (token_self_certainty(sure, v) + token_self_certainty(unsure, v)) / 2
    )
    assert self_certainty([], v) == 0.0


async def test_read_from_a_real_engine_as_the_engine_reports_it(vllm_engine):
    reward = SelfCertaintyReward(
        "sc", SelfCertaintyParams(type="self_certainty", top_k=5), RewardContext({"tiny": vllm_engine}, "tiny")
    )
    await reward.start()
    prompt, answers = "The quick brown fox", [" jumps over", " sat on the mat today"]
    scores = await reward.score(prompt, answers)
    # the same numbers from the engine's own prompt log-probs, by hand
    x = vllm_engine.tokenizer.encode(prompt, add_special_tokens=True)
    for answer, score in zip(answers, scores):
        y = vllm_engine.tokenizer.encode(answer)
        [gen] = await vllm_engine.generate([x + y], SamplingConfig(max_tokens=1, prompt_logprobs=5), f"check-{answer}")
        rows = [dict(sorted(r.items(), key=lambda kv: -kv[1])[:5]) for r in gen.prompt_logprobs[len(x) :]]
        assert len(rows) == len(y)
        assert score == pytest.approx(self_certainty(rows, vllm_engine.info.vocab_size))
        assert score >= 0  # a KL from uniform, of a distribution whose tail is made uniform
