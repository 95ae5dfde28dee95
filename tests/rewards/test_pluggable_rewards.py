"""python rewards (a module:function and an installed plug-in's entry point) and the DPO implicit reward."""

from __future__ import annotations

import math
import sys

import pytest

from alignd.rewards import RewardConfigError, RewardContext, build_reward

from scripted_engine import ScriptedEngine


def count_vowels(prompt, completions, bonus=0.0):
    return [sum(ch in "aeiou" for ch in c) + bonus for c in completions]


async def async_length(prompt, completions):
    return [len(c) for c in completions]


async def test_module_function_sync_and_async():
    r = build_reward("v", {"type": "python", "function": f"{__name__}:count_vowels", "kwargs": {"bonus": 0.5}})
    assert await r.score("", ["banana", "xyz"]) == [3.5, 0.5]
    a = build_reward("l", {"type": "python", "function": f"{__name__}:async_length"})
    assert await a.score("", ["ab", ""]) == [2.0, 0.0]
    with pytest.raises(RewardConfigError, match="cannot import"):
        await build_reward("x", {"type": "python", "function": "no_such_module:f"}).start()
    with pytest.raises(RewardConfigError):
        build_reward("x", {"type": "python", "function": "os.system"})  # not module:function form
    bad = build_reward("x", {"type": "python", "function": "not_a_module:f"})
    assert bad.request_params == frozenset()  # a request can never name code


async def test_installed_plugin_entry_point(tmp_path, monkeypatch):
    # An installed distribution is a package plus a .dist-info folder with entry_points.txt: exactly what pip
    # writes, so importlib.metadata finds it like any plug-in.
    (tmp_path / "alignd_demo_plugin.py").write_text(
        "def shout(prompt, completions):\n    return [float(c.count('!')) for c in completions]\n"
    )
    info = tmp_path / "alignd_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: alignd-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[alignd.rewards]\nshout = alignd_demo_plugin:shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = build_reward("shout", {"type": "python", "entry_point": "shout"})
    await r.start()
    assert await r.score("", ["hi!!", "hi"]) == [2.0, 0.0]
    with pytest.raises(RewardConfigError, match="no installed plug-in"):
        await build_reward("nope", {"type": "python", "entry_point": "nope"}).start()
    sys.modules.pop("alignd_demo_plugin", None)


def _lm(p_a):
    return lambda prefix: {1: math.log(p_a), 2: math.log(1 - p_a - 0.1), 0: math.log(0.1)}


async def test_implicit_reward_by_hand():
    policy = ScriptedEngine(vocab="ab", lm=_lm(0.6))
    reference = ScriptedEngine(vocab="ab", lm=_lm(0.3))
    ctx = RewardContext(engines={"pi": policy, "ref": reference})
    r = build_reward("dpo", {"type": "implicit", "policy": "pi", "reference": "ref", "beta": 0.5}, ctx)
    await r.start()
    aa, bb = await r.score("a", ["aa", "bb"])
    assert aa == pytest.approx(0.5 * 2 * (math.log(0.6) - math.log(0.3)))
    assert bb == pytest.approx(0.5 * 2 * (math.log(0.3) - math.log(0.6)))


async def test_implicit_reward_of_a_model_against_itself_is_zero(vllm_engine):
    ctx = RewardContext(engines={"tiny": vllm_engine})
    r = build_reward("dpo", {"type": "implicit", "policy": "tiny", "reference": "tiny"}, ctx)
    await r.start()
    assert await r.score("Hello", ["world peace", "the sea"]) == [0.0, 0.0]
    with pytest.raises(RewardConfigError, match="not served"):
        await build_reward("x", {"type": "implicit", "policy": "tiny", "reference": "nope"}, ctx).start()
