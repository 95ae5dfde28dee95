"""step_beam and particle_filter by hand on the scripted engine (which paths survive, the resampling with a fixed
seed, one engine call and one reward call per step), step splitting, and the PRM reward on hand-made texts."""

from __future__ import annotations

import math
import random

import pytest

from alignd.decoders import DecodeContext, DecodeRequest
from alignd.decoders.particle_filter import ParticleFilter, ParticleFilterParams
from alignd.decoders.protocol import softmax
from alignd.decoders.step_beam import StepBeam, StepBeamParams
from alignd.engines.protocol import SamplingConfig, StreamDelta
from alignd.rewards import RewardSet, RewardTerm, build_reward
from alignd.rewards.prm import aggregate, split_steps

from scripted_engine import ScriptedEngine

# Two steps of two characters each, "|" between them; the reward counts b's in the answer so far.
ANSWERS = ["ab|bb", "aa|ab", "ab|ab", "aa|bb"]


def count_b(prompt, completions):
    return [float(c.count("b")) for c in completions]


def _rewards() -> RewardSet:
    return RewardSet([RewardTerm(build_reward("b", {"type": "python", "function": f"{__name__}:count_b"}))])


def _request(engine, seed=0) -> DecodeRequest:
    return DecodeRequest("steps", engine.tokenizer.encode("Q"), "Q", SamplingConfig(max_tokens=5, seed=seed))


async def test_step_beam_keeps_the_best_paths_of_every_step():
    # step 1 from the root: "ab|" (1 b) and "aa|" (0), both kept (N = 2)
    # step 2: "ab|" -> "ab|bb" (3), "ab|ab" (2); "aa|" -> "aa|bb" (2), "aa|ab" (1): every path ended, the best two
    # are "ab|bb" and "ab|ab" -> "ab|bb"
    engine = ScriptedEngine(vocab="abQ|", answers=ANSWERS, base="Q")
    decoder = StepBeam(StepBeamParams(beam_width=2, expansions=2, step_separator="|", max_step_tokens=3))
    events = [e async for e in decoder.stream(_request(engine), DecodeContext(engine, _rewards()))]
    deltas, result = [e for e in events if isinstance(e, StreamDelta)], events[-1]
    assert result.choices[0].text == "ab|bb" and result.choices[0].reward == 3.0
    assert [c.text for c in result.candidates] == ["ab|", "aa|", "ab|bb", "ab|ab", "aa|bb", "aa|ab"]
    assert result.info["steps"] == 2 and result.usage.engine_calls == 2 and result.usage.reward_calls == 2
    # after the first step both beams shared "a": it was streamed before the search ended
    assert [d.text for d in deltas] == ["a", "b|bb"] and "".join(d.text for d in deltas) == "ab|bb"
    # every live path's next step came from one call, stopped at the separator (kept in the text)
    assert [len(c.prompts) for c in engine.calls] == [1, 2]
    assert all("|" in c.params.stop and c.params.include_stop_str_in_output for c in engine.calls)


async def test_particle_filter_resamples_by_weight_with_a_fixed_seed():
    engine = ScriptedEngine(vocab="abQ|", answers=ANSWERS, base="Q")
    decoder = ParticleFilter(ParticleFilterParams(particles=2, step_separator="|", max_step_tokens=3, temperature=1.0))
    result = await decoder.decode(_request(engine, seed=11), DecodeContext(engine, _rewards()))
    # Replay by hand: step 1 gives "ab|" (1) and "aa|" (0), weights softmax([1, 0]); resample with the seed's
    # generator; step 2 continues each kept particle from its own prefix; weights; resample again.
    rng = random.Random(11)
    first = rng.choices([0, 1], softmax([1.0, 0.0], 1.0), k=2)
    assert result.info["resamples"][0] == first
    kept = [["ab|", "aa|"][i] for i in first]
    grown = [[a for a in ANSWERS if a.startswith(k)][i % 2] for i, k in enumerate(kept)]
    second = rng.choices([0, 1], softmax([float(g.count("b")) for g in grown], 1.0), k=2)
    assert result.info["resamples"][1] == second
    final = [grown[i] for i in second]
    assert result.choices[0].text == max(final, key=lambda t: t.count("b"))
    assert result.info["steps"] == 2 and result.usage.engine_calls == 2 and result.usage.reward_calls == 2


def test_steps_split_on_the_separator_and_aggregate():
    assert split_steps("Add 2 and 3.\n\nThat is 5.\n\n", "\n\n") == ["Add 2 and 3.", "That is 5."]
    assert split_steps("one|two||three", "|") == ["one", "two", "three"]
    assert split_steps("", "\n\n") == [""]
    assert [aggregate([0.9, 0.5, 0.8], how) for how in ("last", "min")] == [0.8, 0.5]
    assert aggregate([0.5, 0.5, 0.8], "mean") == pytest.approx(0.6)
    assert aggregate([0.5, 0.5], "prod") == 0.25
    assert softmax([None, -math.inf], 1.0) == [0.5, 0.5]


async def test_an_outcome_reward_scores_every_prefix_as_a_step_reward():
    from alignd.rewards import RewardContext

    ctx = RewardContext(engines={})
    ctx.rewards["b"] = build_reward("b", {"type": "python", "function": f"{__name__}:count_b"}, ctx)
    prm = build_reward("steps", {"type": "prm", "backend": "prefix", "outcome": "b", "step_separator": "|"}, ctx)
    await prm.start()
    assert await prm.step_scores("Q", ["ab|bb", "aa"]) == [[1.0, 3.0], [0.0]]
    assert await prm.score("Q", ["ab|bb", "aa"]) == [3.0, 0.0]
    low = prm.with_overrides({"aggregate": "min"})
    assert await low.score("Q", ["ab|bb"]) == [1.0]
