"""Adaptive compute: speculative rejection, blockwise best-of-N, self-consistency and request budgets, by hand on
the scripted engine (which candidates stop when, what the vote is), and on real vLLM with the tiny model."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from alignd.decoders import Budget, DecodeContext, DecodeRequest, DecoderError
from alignd.decoders.best_of_n import BestOfN, BestOfNParams
from alignd.decoders.blockwise_best_of_n import BlockwiseBestOfN, BlockwiseParams
from alignd.decoders.deal import DeAL, DeALParams
from alignd.decoders.protocol import decoder_registry
from alignd.decoders.self_consistency import SelfConsistency, SelfConsistencyParams, leader_probability
from alignd.decoders.speculative_rejection import SpeculativeRejection, SpeculativeRejectionParams
from alignd.engines.protocol import SamplingConfig, StreamDelta
from alignd.rewards import RewardSet, RewardTerm, build_reward

from scripted_engine import ScriptedEngine


def count_b(prompt, completions):
    """A reward whose partial scores carry signal: how many b's the answer has so far."""
    return [float(c.count("b")) for c in completions]


def _b_count() -> RewardSet:
    return RewardSet([RewardTerm(build_reward("b", {"type": "python", "function": f"{__name__}:count_b"}))])


def _request(engine, max_tokens=8, seed=0, prompt="Q") -> DecodeRequest:
    sampling = SamplingConfig(max_tokens=max_tokens, seed=seed)
    return DecodeRequest("adaptive", engine.tokenizer.encode(prompt), prompt, sampling)


# ---- speculative rejection -----------------------------------------------------------------------------------

# Partial (first 4 tokens) and final b counts: A 3 -> 3, B 3 -> 7, C 0 -> 4, D 2 -> 2.
ANSWERS = ["bbbaaaaa", "abbbbbbb", "aaaabbbb", "aabbaaaa"]


async def test_speculative_rejection_stops_the_worst_half_at_the_decision_point():
    engine = ScriptedEngine(vocab="abQ", answers=ANSWERS, base="Q")
    params = SpeculativeRejectionParams(num_candidates=4, chunk=4, rejection_rate=0.5)
    result = await SpeculativeRejection(params).decode(_request(engine), DecodeContext(engine, _b_count()))
    # after 4 tokens: A 3, B 3, C 0, D 2 -> the lowest half (C, D) stop; A and B run to the end: B (7) wins
    assert result.choices[0].text == "abbbbbbb" and result.choices[0].reward == 7.0
    by_index = {c.index: c for c in result.candidates}
    assert by_index[2].dropped == "rejected after 4 tokens (partial reward 0)" and by_index[2].text == "aaaa"
    assert by_index[3].dropped.startswith("rejected after 4 tokens") and by_index[0].text == "bbbaaaaa"
    # every round is one engine call and one reward call; 4 x 4 + 2 x 4 tokens instead of best-of-4's 32
    assert result.usage.engine_calls == 2 and result.usage.reward_calls == 2
    assert result.usage.engine_completion_tokens == 24
    assert result.info["rounds"] == 2 and result.info["candidates_finished"] == 2
    assert [len(c.prompts) for c in engine.calls] == [1, 2] and engine.calls[0].params.n == 4


async def test_speculative_rejection_without_rejection_completes_every_candidate_and_picks_the_best():
    engine = ScriptedEngine(vocab="abQ", answers=ANSWERS, base="Q")
    params = SpeculativeRejectionParams(num_candidates=4, chunk=4, rejection_rate=0.0)
    result = await SpeculativeRejection(params).decode(_request(engine), DecodeContext(engine, _b_count()))
    assert [c.text for c in result.candidates] == ANSWERS and not any(c.dropped for c in result.candidates)
    assert result.choices[0].text == "abbbbbbb" and result.usage.engine_completion_tokens == 32
    # the same pick as best-of-N over the same four answers
    bon = await BestOfN(BestOfNParams(num_candidates=4)).decode(_request(engine), DecodeContext(engine, _b_count()))
    assert bon.choices[0].text == result.choices[0].text


async def test_speculative_rejection_keeps_candidates_that_finish_early():
    # "bb" ends at 2 tokens (EOS): finished candidates keep their score; C is rejected, B still wins at the end
    engine = ScriptedEngine(vocab="abQ", answers=["bb", "abbbbbbb", "aaaabbbb", "aabbaaaa"], base="Q")
    params = SpeculativeRejectionParams(num_candidates=4, schedule=[4], rejection_rate=0.5)
    result = await SpeculativeRejection(params).decode(_request(engine), DecodeContext(engine, _b_count()))
    finished = {c.text: c.finish_reason for c in result.candidates}
    assert finished["bb"] == "stop" and finished["aaaa"] == "rejected" and finished["abbbbbbb"] == "length"
    assert result.choices[0].text == "abbbbbbb"


# ---- blockwise best-of-N -------------------------------------------------------------------------------------


async def test_blockwise_commits_the_best_block_and_streams_it():
    # Block 1 from "": "ab" (1 b) or "bb" (2) -> "bb"; block 2 from "bb": "bbab" (3) or "bbbb" (4) -> "bbbb".
    engine = ScriptedEngine(vocab="abQ", answers=["abaa", "bbab", "bbbb"], base="Q")
    decoder = BlockwiseBestOfN(BlockwiseParams(num_candidates=2, block=2))
    events = [e async for e in decoder.stream(_request(engine, max_tokens=4), DecodeContext(engine, _b_count()))]
    deltas, result = [e for e in events if isinstance(e, StreamDelta)], events[-1]
    assert [d.text for d in deltas] == ["bb", "bb"] and deltas[-1].finish_reason == "length"
    assert result.choices[0].text == "bbbb" and result.choices[0].reward == 4.0
    assert [c.text for c in result.candidates] == ["ab", "bb", "bbab", "bbbb"]
    assert result.usage.engine_calls == 2 and result.usage.reward_calls == 2 and result.info["blocks"] == 2


async def test_a_short_first_block_streams_one_token_then_whole_blocks():
    # First block (1 token) from "": "a" (0 b) or "b" (1) -> "b"; then 2 tokens from "b": "bba" or "bbb" -> "bbb";
    # then the last token: "bbba" or "bbbb" -> "bbbb".
    engine = ScriptedEngine(vocab="abQ", answers=["abaa", "bbab", "bbba", "bbbb"], base="Q")
    decoder = BlockwiseBestOfN(BlockwiseParams(num_candidates=2, block=2, first_block=1))
    events = [e async for e in decoder.stream(_request(engine, max_tokens=4), DecodeContext(engine, _b_count()))]
    deltas, result = [e for e in events if isinstance(e, StreamDelta)], events[-1]
    assert [d.text for d in deltas] == ["b", "bb", "b"] and result.choices[0].text == "bbbb"
    assert [len(c.prompts) for c in engine.calls] == [1, 1, 1]
    assert [c.params.max_tokens for c in engine.calls] == [1, 2, 1]
    # its worst case counts the short block: K x 1 + 1, then two blocks of K x 2 + 2
    assert decoder.worst_case(_request(engine, max_tokens=4)).tokens == 1 + 3 + 2 * 6


def _first_step(table: dict[int, float]):
    """A model that says ``table`` at the answer's first token (after the one-token prompt "Q"), then EOS."""
    return lambda prefix: table if len(prefix) == 1 else {0: 0.0}


def _one_step(k: int = 8) -> BlockwiseBestOfN:
    return BlockwiseBestOfN(BlockwiseParams(num_candidates=k, block=2, first_block=1, first_token="one_step"))


async def test_one_step_draws_the_first_tokens_from_one_step_of_one_sequence():
    # First token: a 0.45, b 0.45, Q 0.1; top_k 2 leaves a and b, each drawn with 1/2. Eight draws hold a b (all
    # eight a: 1/256, and not for this seed), and the b-counting reward commits it; then every continuation is EOS.
    table = {1: math.log(0.45), 2: math.log(0.45), 3: math.log(0.1), 0: -math.inf}
    engine = ScriptedEngine(vocab="abQ", lm=_first_step(table))
    request = _request(engine, max_tokens=4, seed=3, prompt="Q")
    request = replace(request, sampling=request.sampling.but(top_k=2))
    events = [e async for e in _one_step().stream(request, DecodeContext(engine, _b_count()))]
    deltas, result = [e for e in events if isinstance(e, StreamDelta)], events[-1]
    first = result.candidates[:8]
    assert {c.text for c in first} == {"a", "b"} and all(c.num_tokens == 1 for c in first)
    assert [d.text for d in deltas] == ["b", ""] and result.choices[0].text == "b"
    assert result.choices[0].finish_reason == "stop"
    # the first token is ONE greedy one-token sequence with the model's top log-probs, not eight sequences
    step = engine.calls[0].params
    assert (step.n, step.max_tokens, step.temperature, step.logprobs) == (1, 1, 0.0, engine.info.max_logprobs)
    # the next block draws the seeds it would have drawn after an n=8 first block
    assert engine.calls[1].params.n == 8 and engine.calls[1].params.seed == 3 + 8
    assert result.usage.engine_calls == 2 == result.usage.reward_calls


async def test_one_step_holds_stop_tokens_before_min_tokens_and_cuts_at_stop_strings():
    engine = ScriptedEngine(vocab="abQ", lm=_first_step({0: math.log(0.6), 1: math.log(0.4), 2: -math.inf}))
    greedy = _request(engine, max_tokens=4, prompt="Q")
    greedy = replace(greedy, sampling=greedy.sampling.but(temperature=0.0))
    ended = await _one_step(2).decode(greedy, DecodeContext(engine, _b_count()))
    assert ended.choices[0].text == "" and ended.choices[0].finish_reason == "stop"  # EOS, the likeliest
    assert ended.usage.engine_calls == 1  # nothing after a stop
    held = replace(greedy, sampling=greedy.sampling.but(min_tokens=1))
    assert (await _one_step(2).decode(held, DecodeContext(engine, _b_count()))).choices[0].text == "a"
    engine = ScriptedEngine(vocab="abQ", lm=_first_step({2: 0.0}))
    stopped = _request(engine, max_tokens=4, prompt="Q")
    stopped = replace(stopped, sampling=stopped.sampling.but(stop=("b",)))
    result = await _one_step(2).decode(stopped, DecodeContext(engine, _b_count()))
    assert result.choices[0].text == "" and result.choices[0].finish_reason == "stop"


async def test_one_step_refuses_what_it_cannot_replay():
    engine = ScriptedEngine(vocab="abQ", lm=_first_step({1: 0.0}))
    request = _request(engine, max_tokens=4, prompt="Q")
    long_first = BlockwiseBestOfN(BlockwiseParams(num_candidates=2, block=2, first_token="one_step"))
    with pytest.raises(DecoderError) as err:
        await long_first.decode(request, DecodeContext(engine, _b_count()))
    assert err.value.param == "decoder.first_block"
    penalised = replace(request, sampling=request.sampling.but(repetition_penalty=1.2))
    with pytest.raises(DecoderError) as err:
        await _one_step().decode(penalised, DecodeContext(engine, _b_count()))
    assert err.value.param == "repetition_penalty" and "raw log-probs" in str(err.value)
    assert engine.calls == []


async def test_one_step_first_tokens_on_the_real_engine(vllm_engine, monkeypatch):
    calls: list[SamplingConfig] = []
    generate = vllm_engine.generate

    async def watched(prompts, params, request_id, **kwargs):
        calls.append(params)
        return await generate(prompts, params, request_id, **kwargs)

    monkeypatch.setattr(vllm_engine, "generate", watched)
    rewards = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
    ids = vllm_engine.tokenizer.encode("The sea")
    request = DecodeRequest("one", ids, "The sea", SamplingConfig(max_tokens=9, seed=5, temperature=1.0))
    decoder = BlockwiseBestOfN(BlockwiseParams(num_candidates=4, block=4, first_block=1, first_token="one_step"))
    result = await decoder.decode(request, DecodeContext(vllm_engine, rewards))
    assert [(c.n, c.max_tokens, c.logprobs) for c in calls] == [(1, 1, 20), (4, 4, None), (4, 4, None)]
    [gen] = await generate([ids], SamplingConfig(max_tokens=1, temperature=0.0, logprobs=20), "top")
    top = gen.completions[0].top_logprobs[0]
    first = result.candidates[:4]
    assert all(c.num_tokens == 1 and c.token_ids[0] in top for c in first)
    # the longest first token is committed (the reward counts characters), then blocks of 4 as usual
    answer = result.choices[0]
    assert answer.token_ids[0] in {c.token_ids[0] for c in first if len(c.text) == max(len(f.text) for f in first)}
    assert result.usage.engine_calls == result.info["blocks"] == result.usage.reward_calls == 3
    assert answer.text == vllm_engine.tokenizer.decode(answer.token_ids)  # the drawn token's text as vLLM's
    again = await decoder.decode(request, DecodeContext(vllm_engine, rewards))
    assert [c.text for c in again.candidates] == [c.text for c in result.candidates]  # seeded: the same draws


async def test_a_block_as_long_as_the_answer_is_best_of_n_on_the_real_engine(vllm_engine):
    rewards = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
    ids = vllm_engine.tokenizer.encode("The sea")
    request = DecodeRequest("blk", ids, "The sea", SamplingConfig(max_tokens=12, seed=5, temperature=1.0))
    bon = await BestOfN(BestOfNParams(num_candidates=4)).decode(request, DecodeContext(vllm_engine, rewards))
    block = BlockwiseBestOfN(BlockwiseParams(num_candidates=4, block=12))
    one = await block.decode(request, DecodeContext(vllm_engine, rewards))
    assert [c.text for c in one.candidates] == [c.text for c in bon.candidates]
    assert one.choices[0].text == bon.choices[0].text and one.usage.engine_calls == 1
    # shorter blocks: one engine call and one reward call per block, the answer built from the chosen blocks
    many = await BlockwiseBestOfN(BlockwiseParams(num_candidates=3, block=4)).decode(
        request, DecodeContext(vllm_engine, rewards)
    )
    blocks = many.info["blocks"]
    assert many.usage.engine_calls == blocks == many.usage.reward_calls and blocks >= 2
    assert many.choices[0].num_tokens <= 12
    assert any(many.choices[0].text.startswith(c.text) for c in many.candidates[:3])  # built on a first block


async def test_rounds_draw_fresh_samples_the_same_as_one_call_on_the_real_engine(vllm_engine):
    # Each engine call of a request gets the next unused seeds: rounds of 2 redraw nothing (seeded seed + round,
    # four rounds of 2 drew on 5 distinct seeds: 11-12, 12-13, 13-14, 14-15) and are the 8 samples of one call.
    rewards = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
    ids = vllm_engine.tokenizer.encode("The sea")
    request = DecodeRequest("rounds", ids, "The sea", SamplingConfig(max_tokens=8, seed=11, temperature=1.0))
    one = await BestOfN(BestOfNParams(num_candidates=8)).decode(request, DecodeContext(vllm_engine, rewards))
    rounds = await BestOfN(BestOfNParams(num_candidates=8, round_size=2)).decode(
        request, DecodeContext(vllm_engine, rewards)
    )
    assert rounds.usage.engine_calls == 4 and one.usage.engine_calls == 1
    texts = [c.text for c in rounds.candidates]
    assert len(set(texts)) == 8 and texts == [c.text for c in one.candidates]
    # self-consistency's adaptive stop sees a prefix of the samples its fixed budget draws
    fixed = await SelfConsistency(SelfConsistencyParams(round_size=2, max_samples=8, stop="fixed")).decode(
        request, DecodeContext(vllm_engine)
    )
    assert [c.text for c in fixed.candidates] == texts


# ---- self-consistency ----------------------------------------------------------------------------------------


def test_leader_probability_is_the_beta_posterior():
    # Beta(4, 1): P(X > 1/2) = 1 - 1/2**4
    assert leader_probability(3, 0) == 15 / 16
    assert leader_probability(9, 3) == pytest.approx(1 - (286 + 78 + 13 + 1) / 8192)


async def test_self_consistency_stops_once_the_vote_is_settled():
    # Every round of 4 samples votes 7, 7, 8, 7. After 4: 3-1, P = 0.81; after 8: 6-2, P = 0.91; after 12:
    # 9-3, P = 0.954 >= 0.95 (and 9 - 3 > the 4 samples left): stop, 12 of 16 drawn.
    engine = ScriptedEngine(vocab="0123456789 Itismaybe!", samples=["It is 7", "7", "maybe 8", "7!"])
    params = SelfConsistencyParams(round_size=4, max_samples=16, confidence=0.95)
    result = await SelfConsistency(params).decode(_request(engine, prompt="7"), DecodeContext(engine))
    assert result.info["winner"] == "7" and result.info["votes"] == {"7": 9, "8": 3}
    assert result.info["samples"] == 12 and result.info["stopped_early"] is True
    assert result.choices[0].text == "It is 7" and result.usage.engine_calls == 3
    fixed = await SelfConsistency(params.model_copy(update={"stop": "fixed"})).decode(
        _request(engine, prompt="7"), DecodeContext(engine)
    )
    assert fixed.info["samples"] == 16 and fixed.info["votes"] == {"7": 12, "8": 4}


async def test_self_consistency_refuses_an_unknown_extractor():
    engine = ScriptedEngine(vocab="0123456789", samples=["7"])
    decoder = SelfConsistency(SelfConsistencyParams(extract="boxed"))
    with pytest.raises(DecoderError) as err:
        await decoder.decode(_request(engine, prompt="7"), DecodeContext(engine))
    assert err.value.param == "decoder.extract"
    boxed = SelfConsistency(
        SelfConsistencyParams(extract="boxed", round_size=2, max_samples=2),
        SelfConsistency.Options(patterns={"boxed": r"\[(\d+)\]"}),
    )
    engine = ScriptedEngine(vocab="0123456789[] ", samples=["1 [42]", "[42] 7"])
    result = await boxed.decode(_request(engine, prompt="1"), DecodeContext(engine))
    assert result.info["votes"] == {"42": 2}


# ---- budgets -------------------------------------------------------------------------------------------------


async def test_best_of_n_stops_at_its_budget_with_the_best_found_so_far():
    # 1 prompt token, 4-token answers: 13 engine tokens buy one round of 3 candidates, then nothing more
    engine = ScriptedEngine(vocab="abQ", samples=["aaaa", "abbb", "bbbb", "bbba"])
    ctx = DecodeContext(engine, _b_count(), budget=Budget(max_engine_tokens=13))
    result = await BestOfN(BestOfNParams(num_candidates=8)).decode(_request(engine, max_tokens=4), ctx)
    assert len(result.candidates) == 3 and result.choices[0].text == "bbbb"
    assert result.info == {"rounds": 1, "budget_exhausted": True, "engine_tokens_spent": 13}
    unbounded = DecodeContext(engine, _b_count(), budget=Budget(max_engine_tokens=10_000))
    whole = await BestOfN(BestOfNParams(num_candidates=8)).decode(_request(engine, max_tokens=4), unbounded)
    assert len(whole.candidates) == 8 and whole.info == {"budget_exhausted": False, "engine_tokens_spent": 33}


async def test_a_search_cut_by_its_budget_says_so_and_is_not_length():
    # a two-token language model, EOS never likely: the search would run to max_tokens without its budget
    table = {1: math.log(0.55), 2: math.log(0.44), 0: math.log(0.01)}
    engine = ScriptedEngine(vocab="ab", lm=lambda prefix: table)
    decoder = DeAL(DeALParams(top_k=2, lookahead=1))
    ctx = DecodeContext(engine, _b_count(), budget=Budget(max_engine_tokens=3 * decoder.step_cost()))
    events = [e async for e in decoder.stream(_request(engine, max_tokens=30, prompt="b"), ctx)]
    result = events[-1]
    assert events[-2].finish_reason == "budget" and result.choices[0].finish_reason == "budget"
    assert result.info["budget_exhausted"] is True and 0 < result.choices[0].num_tokens < 30
    assert result.info["engine_tokens_spent"] <= 3 * decoder.step_cost()


@pytest.mark.parametrize(
    "name", ["speculative_rejection", "blockwise_best_of_n", "self_consistency", "step_beam", "particle_filter"]
)
def test_a_decoder_of_one_answer_refuses_n_above_one_on_n(name):
    engine = ScriptedEngine(vocab="abQ", answers=ANSWERS, base="Q")
    decoder = decoder_registry()[name]()
    request = replace(_request(engine), n=2)
    with pytest.raises(DecoderError) as err:
        decoder.prepare(request, engine, _b_count())
    assert err.value.param == "n" and str(err.value) == f"{name} returns one answer; set n=1"
