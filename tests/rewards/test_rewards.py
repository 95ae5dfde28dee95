"""Reward kinds on real parts (judge on vLLM, classifier with transformers), combination and failure policy."""

from __future__ import annotations

import asyncio
import math

import pytest

from alignd.engines.metering import Meter, MeteredEngine, metering
from alignd.engines.protocol import logsumexp
from alignd.rewards import (
    Reward,
    RewardConfigError,
    RewardContext,
    RewardError,
    RewardParams,
    RewardSet,
    RewardTerm,
    build_reward,
    register,
)


async def test_keywords_are_whole_word_and_case_insensitive():
    r = build_reward("kw", {"type": "keywords", "keywords": ["cat", "Sea"], "forbidden": ["war"]})
    assert await r.score("", ["The SEA and a cat", "concatenate", "sea war"]) == [1.0, 0.0, -0.5]


async def test_regex_modes_and_bad_pattern():
    assert await build_reward("r", {"type": "regex", "pattern": r"\d+"}).score("", ["a1", "b"]) == [1.0, 0.0]
    full = build_reward("r", {"type": "regex", "pattern": r"\d+", "mode": "fullmatch"})
    assert await full.score("", [" 12 ", "1a"]) == [1.0, 0.0]
    with pytest.raises(RewardConfigError):
        build_reward("r", {"type": "regex", "pattern": "("})


async def test_request_overrides_only_for_allowed_fields():
    kw = build_reward("kw", {"type": "keywords"})
    assert await kw.with_overrides({"keywords": ["dog"]}).score("", ["a dog"]) == [1.0]
    with pytest.raises(RewardConfigError):
        kw.with_overrides({"timeout_s": 1})
    with pytest.raises(RewardConfigError):
        build_reward("r", {"type": "regex", "pattern": "a"}).with_overrides({"pattern": "(a+)+$"})


async def test_unknown_kind_and_unknown_field_are_actionable():
    with pytest.raises(RewardConfigError, match="set type to one of"):
        build_reward("x", {"type": "nope"})
    with pytest.raises(RewardConfigError, match="maxx: Extra inputs"):
        build_reward("x", {"type": "length", "maxx": 3})


async def test_sum_combines_declared_rewards():
    ctx = RewardContext(engines={})
    ctx.rewards["len"] = build_reward("len", {"type": "length", "unit": "chars"}, ctx)
    ctx.rewards["kw"] = build_reward("kw", {"type": "keywords", "keywords": ["ab"]}, ctx)
    total = build_reward("both", {"type": "sum", "components": {"len": 0.5, "kw": 10}}, ctx)
    await total.start()
    assert await total.score("", ["ab", "xyz"]) == [11.0, 1.5]


async def test_judge_is_log_odds_of_yes_in_one_engine_call(vllm_engine):
    ctx = RewardContext(engines={"tiny": vllm_engine}, default_model="tiny")
    judge = build_reward("judge", {"type": "judge"}, ctx)
    await judge.start()
    # As the server does: the judge's engine reports to the scoring request's meter, under the judge's name.
    judge.context = RewardContext(engines={"tiny": MeteredEngine(vllm_engine)}, default_model="tiny")
    completions = ["Paris.", "I like turtles", "The answer is four."]
    meter = Meter()
    with metering(meter, "reward"):
        scores = (await RewardSet([RewardTerm(judge)]).score("What is the capital of France?", completions)).total
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    assert list(meter.by_source) == ["reward:judge"]
    work = meter.by_source["reward:judge"]
    assert work.calls == 1 and work.requests == 3 and work.prompt_tokens > 3 * len(completions)
    assert work.completion_tokens == 3  # one verdict token each
    # Recompute one score by teacher-forcing each verdict token.
    yes, no = judge._verdict_ids(vllm_engine)
    prompt = judge.render(vllm_engine, "What is the capital of France?", completions[1])
    lps = await vllm_engine.continuation_logprobs([prompt] * len(yes + no), [[t] for t in yes + no], "judge-check")
    expected = logsumexp([lp[0] for lp in lps[: len(yes)]]) - logsumexp([lp[0] for lp in lps[len(yes) :]])
    assert scores[1] == pytest.approx(expected, abs=1e-3)


async def test_classifier_batches_match_single_scores(tiny_classifier):
    rm = build_reward("rm", {"type": "classifier", "path": str(tiny_classifier), "batch_size": 2})
    await rm.start()
    texts = ["a short one", "a somewhat longer answer about the sea", "x", "Paris is the capital of France."]
    batched = await rm.score("Question?", texts)
    single = [(await rm.score("Question?", [t]))[0] for t in texts]
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(round(s, 6) for s in batched)) == 4  # padding did not collapse different inputs
    sig = build_reward("rm2", {"type": "classifier", "path": str(tiny_classifier), "activation": "sigmoid"})
    probs = await sig.score("Question?", texts)
    assert probs == pytest.approx([1 / (1 + math.exp(-s)) for s in batched], abs=1e-5)


async def test_classifier_label_must_exist(tiny_classifier):
    rm = build_reward("rm", {"type": "classifier", "path": str(tiny_classifier), "label": "POSITIVE"})
    with pytest.raises(RewardConfigError, match="not in the model's labels"):
        await rm.start()
    with pytest.raises(RewardConfigError, match="no config.json"):
        build_reward("rm", {"type": "classifier", "path": "/nonexistent"})


class _BadParams(RewardParams):
    mode: str = "raise"


@register("test_bad")
class _Bad(Reward[_BadParams]):
    async def score(self, prompt, completions):
        if self.params.mode == "raise":
            raise RuntimeError("secret /internal/path exploded")
        if self.params.mode == "slow":
            await asyncio.sleep(10)
        return [math.nan] + [1.0] * (len(completions) - 1)


@pytest.mark.parametrize("mode, why", [("raise", "raised RuntimeError"), ("slow", "timed out"), ("nan", "NaN")])
async def test_failure_policy_fail_raises_a_clean_error(mode, why):
    bad = build_reward("bad", {"type": "test_bad", "mode": mode, "timeout_s": 0.2})
    with pytest.raises(RewardError) as err:
        await RewardSet([RewardTerm(bad)]).score("", ["a", "b"])
    assert why in str(err.value) and "/internal/path" not in str(err.value)


@pytest.mark.parametrize("mode, dropped", [("raise", {0, 1}), ("slow", {0, 1}), ("nan", {0})])
async def test_failure_policy_drop_excludes_candidates_with_a_reason(mode, dropped):
    bad = build_reward("bad", {"type": "test_bad", "mode": mode, "timeout_s": 0.2, "on_error": "drop"})
    scores = await RewardSet([RewardTerm(bad)]).score("", ["a", "b"])
    assert set(scores.dropped) == dropped
    assert all(scores.total[i] is None for i in dropped)


async def test_concurrent_requests_share_classifier_forward_passes(tiny_classifier):
    rm = build_reward("rm", {"type": "classifier", "path": str(tiny_classifier), "batch_size": 32})
    await rm.start()
    alone = [await rm.score("Question one?", ["a b", "c d e"]), await rm.score("Question two?", ["f", "g h"])]
    before = rm.forward_passes
    together = await asyncio.gather(
        rm.score("Question one?", ["a b", "c d e"]), rm.score("Question two?", ["f", "g h"])
    )
    assert rm.forward_passes == before + 1  # two requests, one forward pass
    for got, want in zip(together, alone):
        assert got == pytest.approx(want, abs=1e-4)  # each request still gets its own prompt's scores
    off = build_reward("rm0", {"type": "classifier", "path": str(tiny_classifier), "batch_window_ms": 0})
    await off.start()
    await asyncio.gather(off.score("q", ["a"]), off.score("q", ["b"]))
    assert off.forward_passes == 2


async def test_vllm_pooling_agrees_with_transformers_classifier(tiny_classifier):
    texts = ["a short one", "a somewhat longer answer about the sea", "x", "Paris is the capital of France."]
    pooled = build_reward(
        "pool",
        {
            "type": "vllm_pooling",
            "path": str(tiny_classifier),
            "engine_args": {"max_model_len": 512, "kv_cache_memory_bytes": 64 << 20},
        },
    )
    hf = build_reward("hf", {"type": "classifier", "path": str(tiny_classifier)})
    await pooled.start()
    await hf.start()
    try:
        for prompt in ("Question?", [{"role": "user", "content": "Question?"}]):
            assert await pooled.score(prompt, texts) == pytest.approx(await hf.score(prompt, texts), abs=1e-4)
    finally:
        await pooled.close()


async def test_normalize_puts_rewards_of_different_scales_on_one_footing():
    long = build_reward("len", {"type": "length", "unit": "chars", "normalize": "zscore"})
    scores = await RewardSet([RewardTerm(long)]).score("", ["a", "abc", "abcde"])
    assert scores.per_reward["len"] == pytest.approx([-1.2247449, 0.0, 1.2247449])
    cdf = build_reward("len", {"type": "length", "unit": "chars", "normalize": "cdf"})
    scores = await RewardSet([RewardTerm(cdf)]).score("", ["a", "abc", "abc", "abcde"])
    # each against the other three, ties half: 0/3, (1 + .5)/3, (1 + .5)/3, 3/3
    assert scores.per_reward["len"] == pytest.approx([0.0, 0.5, 0.5, 1.0])
