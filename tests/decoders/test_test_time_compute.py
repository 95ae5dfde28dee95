"""Test-time compute that spends where it pays: Borda votes on a reward's ranks, DeepConf's confidence votes
(offline, by hand) and its online stop, which aborts low-confidence samples mid-generation on real vLLM, and
QAlign's Metropolis-Hastings chain, by hand on the scripted engine and on real vLLM."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest

from alignd.decoders import Candidate, DecodeContext, DecodeRequest
from alignd.decoders.allocation import allocate
from alignd.decoders.best_of_n import BestOfN, BestOfNParams
from alignd.decoders.confidence import group_confidences, percentile, token_confidence, trace_confidence
from alignd.decoders.qalign import QAlign, QAlignParams, acceptance
from alignd.decoders.self_consistency import SelfConsistency, SelfConsistencyParams
from alignd.engines.protocol import SamplingConfig
from alignd.rewards import RewardSet, RewardTerm, build_reward

from scripted_engine import ScriptedEngine


def _candidate(i: int, reward: float | None = None, score: float | None = None) -> Candidate:
    return Candidate(index=i, text="", token_ids=[], finish_reason="stop", reward=reward, score=score)


def test_borda_votes_by_rank_of_the_reward():
    sc = SelfConsistency(SelfConsistencyParams(vote="borda", borda_power=0.5))
    samples = [_candidate(0, 0.2), _candidate(1, 0.9), _candidate(2, 0.5), _candidate(3, 0.1)]
    votes = sc._tally(samples, ["7", "8", "7", "8"])
    # ranks by reward: 1 (0.9, "8") -> 4^0.5, 2 (0.5, "7") -> 3^0.5, 3 (0.2, "7") -> 2^0.5, 4 (0.1, "8") -> 1
    assert votes["8"] == pytest.approx(2 + 1)
    assert votes["7"] == pytest.approx(math.sqrt(3) + math.sqrt(2))
    assert sc._is_settled(votes, remaining=4) is False  # 3.15 of 6.15 votes: far from 95%


def test_confidence_votes_keep_the_most_confident_share():
    sc = SelfConsistency(SelfConsistencyParams(vote="confidence", keep=0.5))
    samples = [_candidate(0, score=3.0), _candidate(1, score=1.0), _candidate(2, score=2.5), _candidate(3, score=0.5)]
    votes = sc._tally(samples, ["A", "B", "B", "B"])
    # the top half by confidence (3.0 "A", 2.5 "B") vote with their confidence; the two least confident do not
    assert dict(votes) == {"A": 3.0, "B": 2.5}
    # online, every sample at or above the warm-up's threshold votes, however many that is
    assert dict(sc._tally(samples, ["A", "B", "B", "B"], threshold=1.0)) == {"A": 3.0, "B": 3.5}


def test_token_group_and_trace_confidence_by_hand():
    row = {1: math.log(0.5), 2: math.log(0.25), 3: math.log(0.25)}
    assert token_confidence(row, 3) == pytest.approx(-(math.log(0.5) + 2 * math.log(0.25)) / 3)
    assert token_confidence(row, 1) == pytest.approx(-math.log(0.5))
    assert group_confidences([4.0, 2.0, 6.0], window=8) == [4.0]  # shorter than a window: one group
    values = [4.0, 4.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert trace_confidence(values, window=2, mode="lowest_group") == 1.0
    groups = sorted(group_confidences(values, 2))  # 11 groups: the lowest 10% is the lowest 2
    assert trace_confidence(values, window=2, mode="bottom_10") == pytest.approx((groups[0] + groups[1]) / 2)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 10) == pytest.approx(1.4)


async def test_online_confidence_stops_samples_under_the_warm_up_threshold(vllm_engine):
    prompt = vllm_engine.tokenizer.encode("Once upon a time", add_special_tokens=True)
    request = DecodeRequest("deepconf", prompt, "Once upon a time", SamplingConfig(max_tokens=24, seed=3))
    params = SelfConsistencyParams(
        vote="confidence", online=True, keep=0.9, window=4, round_size=4, max_samples=16, stop="fixed", extract="exact"
    )
    ctx = DecodeContext(vllm_engine)
    result = await SelfConsistency(params).decode(request, ctx)
    info = result.info
    threshold = info["threshold"]
    stopped = [c for c in result.candidates if c.finish_reason == "abort"]
    assert info["stopped_samples"] == len(stopped) > 0
    for c in result.candidates[4:]:  # after the warm-up: stopped once a window is under the threshold, or never
        windows = group_confidences([token_confidence(r, 5) for r in c.top_logprobs], 4)
        if c in stopped:
            assert len(c.token_ids) < 24 and min(windows) < threshold
            assert "under the warm-up threshold" in c.dropped and c.score is None
        else:
            assert min(windows) >= threshold
    # every token the stopped samples drew is counted, and nothing is left running in the engine
    assert result.usage.engine_completion_tokens == sum(len(c.token_ids) for c in result.candidates)
    assert vllm_engine._llm.get_num_unfinished_requests() == 0


def _moody_lm(prefix: tuple[int, ...]) -> dict[int, float]:
    """As sure of its next token as the last one says: after token t it puts 0.1 * t on the token after t (up to
    0.8 after 'h'), the rest spread evenly over the other letters and the space; EOS 0.01."""
    last = prefix[-1] if prefix else 1
    favourite, mass = last % 9 + 1, 0.1 * min(last, 8)
    table = {t: math.log((0.99 - mass) / 8) for t in range(1, 10)}
    table[favourite] = math.log(mass)
    return {**table, 0: math.log(0.01)}


async def test_online_confidence_stops_a_sample_at_the_first_window_under_the_threshold_by_hand():
    """The scripted engine streams each token with its top log-probs, so the rule is checked to the token: the
    warm-up's trace confidences set the threshold at their (1 - keep) percentile; a later sample runs until the
    first window of ``window`` token confidences whose mean is under it, then stops there, its request aborted."""
    engine = ScriptedEngine(lm=_moody_lm)
    request = DecodeRequest("dc", engine.tokenizer.encode("ab"), "ab", SamplingConfig(max_tokens=12, seed=5))
    params = SelfConsistencyParams(
        vote="confidence",
        online=True,
        keep=0.75,
        window=3,
        confidence_top_k=3,
        round_size=4,
        max_samples=12,
        stop="fixed",
        extract="exact",
    )
    result = await SelfConsistency(params).decode(request, DecodeContext(engine))
    warm, later = result.candidates[:4], result.candidates[4:]

    def confidences(c: Candidate) -> list[float]:
        return [token_confidence(row, 3) for row in c.top_logprobs]

    expected = percentile([trace_confidence(confidences(c), 3) for c in warm], 25)
    assert result.info["threshold"] == pytest.approx(expected)
    stopped = 0
    for c in later:
        values = confidences(c)
        under = [end for end in range(2, len(values)) if sum(values[end - 2 : end + 1]) / 3 < expected]
        if c.finish_reason == "abort":
            stopped += 1
            assert under and len(c.token_ids) == under[0] + 1  # stopped at the token that closed the window
        else:
            assert not under
    assert stopped == result.info["stopped_samples"] > 0
    # every token a stopped sample drew is counted
    assert result.usage.engine_completion_tokens == sum(len(c.token_ids) for c in result.candidates)


def _twin_lm(prefix: tuple[int, ...]) -> dict[int, float]:
    """After the two-letter prompt, 'a' (0.6) or 'b' (0.4), then that letter until three, then EOS: every answer is
    'aaa' or 'bbb' with the same confidence, so no sample falls under the warm-up threshold."""
    answer = prefix[2:]
    if not answer:
        return {1: math.log(0.6), 2: math.log(0.4)}
    return {answer[0] if len(answer) < 3 else 0: math.log(0.98), 3: math.log(0.02)}


async def test_online_confidence_stops_every_running_sample_once_the_vote_is_settled():
    """DeepConf counts the vote again as each later sample finishes; the first time the leader holds ``consensus``
    of it, the samples still running are stopped (their requests aborted, their tokens counted) and the vote ends.
    The warm-up is its own size (``warmup``, N_init) and the later round is bigger. The scripted engine runs the
    round's streams one after another, so the first sample that settles the vote stops all the later ones at their
    first token."""
    engine = ScriptedEngine(lm=_twin_lm)
    request = DecodeRequest("dc", engine.tokenizer.encode("ab"), "ab", SamplingConfig(max_tokens=6, seed=4))
    params = SelfConsistencyParams(
        vote="confidence",
        online=True,
        keep=1.0,
        window=2,
        confidence_top_k=2,
        warmup=2,
        round_size=8,
        max_samples=10,
        consensus=0.75,
        extract="exact",
    )
    result = await SelfConsistency(params).decode(request, DecodeContext(engine))
    samples = result.candidates
    assert [len(call.prompts) * call.params.n for call in engine.calls] == [2] + [1] * 8  # warm-up, then 8 streams
    weight = trace_confidence([token_confidence(row, 2) for row in samples[0].top_logprobs], 2)
    votes = Counter(c.text for c in samples[:2])
    settled_at = None
    for i, c in enumerate(samples[2:], start=2):
        if settled_at is not None:  # stopped at its first token, not counted in the vote
            assert c.finish_reason == "abort" and len(c.token_ids) == 1 and "vote was settled" in c.dropped
            continue
        assert c.finish_reason == "stop" and result.info["confidences"][c.index] == pytest.approx(weight)
        votes[c.text] += 1
        if max(votes.values()) / sum(votes.values()) >= 0.75:
            settled_at = i
    assert settled_at is not None and settled_at < len(samples) - 1
    assert result.info["stopped_early"] and result.info["stopped_samples"] == len(samples) - 1 - settled_at
    assert result.info["votes"] == {a: pytest.approx(n * weight) for a, n in votes.items()}
    assert result.usage.engine_completion_tokens == sum(len(c.token_ids) for c in samples)


# ---- QAlign ----------------------------------------------------------------------------------------------------


def test_qalign_acceptance_is_the_tilted_ratio_with_the_length_correction():
    assert acceptance(2.0, 1.0, 5, 5, 1.0) == 1.0  # uphill: always
    assert acceptance(1.0, 2.0, 5, 5, 0.5) == pytest.approx(math.exp(-2.0))
    assert acceptance(1.0, 1.0, 6, 12, 1.0) == pytest.approx(0.5)  # the reverse move has twice the cut points
    assert acceptance(1.0, 1.0, 12, 6, 1.0) == 1.0


async def test_qalign_resamples_suffixes_of_the_current_answer_by_hand():
    engine = ScriptedEngine()  # uniform over "abcdefgh " and EOS: seeded random answers
    rewards = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
    request = DecodeRequest("q", engine.tokenizer.encode("ab"), "ab", SamplingConfig(max_tokens=6, seed=7))
    result = await QAlign(QAlignParams(steps=3, beta=1.0)).decode(request, DecodeContext(engine, rewards))
    rng = random.Random(7)
    states = [result.candidates[0]]
    for step, proposal in enumerate(result.candidates[1:], start=1):
        current = states[-1]
        cut = rng.randrange(current.num_tokens)
        call = engine.calls[step]
        # the proposal's prompt is the prompt plus the current answer's first `cut` tokens, and it keeps them
        assert call.prompts == [engine.tokenizer.encode("ab") + current.token_ids[:cut]]
        assert call.params.max_tokens == 6 - cut and proposal.token_ids[:cut] == current.token_ids[:cut]
        a = acceptance(proposal.reward, current.reward, current.num_tokens, proposal.num_tokens, 1.0)
        assert proposal.score == pytest.approx(a)
        states.append(proposal if rng.random() < a else current)
    assert result.choices[0] is states[-1] and len({c.text for c in result.candidates}) > 1
    assert result.info["chain"] == [c.index for c in states]
    assert result.usage.engine_calls == 4 and result.usage.reward_calls == 4


async def test_qalign_on_the_real_engine_reads_prefixes_from_the_cache(vllm_engine):
    rewards = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
    prompt = vllm_engine.tokenizer.encode("Once upon a time, " * 20, add_special_tokens=True)
    request = DecodeRequest("qalign-real", prompt, "Once upon a time", SamplingConfig(max_tokens=16, seed=5))
    result = await QAlign(QAlignParams(steps=6, beta=2.0)).decode(request, DecodeContext(vllm_engine, rewards))
    assert len(result.candidates) == 7 and 0 <= result.info["acceptance_rate"] <= 1
    usage = result.usage
    assert usage.engine_cached_tokens > 0  # the prompt (and kept prefixes) came from the prefix cache
    # each proposal's prompt is the prompt plus its kept prefix, and it generates the rest: every token of every
    # state is either a kept prefix (prompt side) or generated, once
    total = usage.engine_prompt_tokens + usage.engine_completion_tokens
    assert total == 7 * len(prompt) + sum(c.num_tokens for c in result.candidates)


# ---- one budget for several prompts -----------------------------------------------------------------------------


def spread_on_a(prompt, completions):
    """Rewards that spread for the prompt "a" (the answer's length) and are all alike for any other."""
    return [float(len(c)) if prompt == "a" else 1.0 for c in completions]


async def test_the_rest_of_the_budget_goes_where_rewards_spread():
    engine = ScriptedEngine()  # seeded random answers of random lengths
    rewards = RewardSet([RewardTerm(build_reward("s", {"type": "python", "function": f"{__name__}:spread_on_a"}))])
    prompts = ["a", "b", "c"]
    requests = [
        DecodeRequest(f"p{i}", engine.tokenizer.encode(t), t, SamplingConfig(max_tokens=6, seed=i))
        for i, t in enumerate(prompts)
    ]
    contexts = [DecodeContext(engine, rewards) for _ in prompts]
    decoder = BestOfN(BestOfNParams(num_candidates=8, allocate=True, pilot=3, max_per_prompt=16))
    assert decoder.decodes_together() and not BestOfN(BestOfNParams(num_candidates=8)).decodes_together()
    results = await decoder.decode_together(requests, contexts)
    infos = [r.info for r in results]
    assert [i["pilot"] for i in infos] == [3, 3, 3]
    assert infos[1]["allocated"] == infos[2]["allocated"] == 0  # nothing to choose between: no more samples
    assert infos[1]["reward_spread"] == 0.0 and infos[0]["reward_spread"] > 0
    # prompt "a" gets the rest of what 8 per prompt would have cost, up to its cap of 16 samples
    costs = [statistics.fmean(c.num_tokens for c in r.candidates[:3]) for r in results]
    expected = allocate(
        [i["reward_spread"] for i in infos],
        [max(1.0, c) for c in costs],
        [3] * 3,
        sum(5 * max(1.0, c) for c in costs),
        16,
        overheads=[1.0] * 3,  # each one-character prompt is read again by its second call (no prefix cache here)
    )
    assert [i["allocated"] for i in infos] == expected and expected[0] > 5
    assert len(results[0].candidates) == 3 + expected[0]
    assert results[0].choices[0].reward == max(c.reward for c in results[0].candidates)
