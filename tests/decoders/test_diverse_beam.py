"""diverse_beam: a hand-computed search on the scripted engine, vLLM's own beam search as the oracle for G = 1
and for lambda = 0, and more distinct bigrams than plain beam search when the groups are penalised."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from alignd.decoders import DecodeContext, DecodeRequest, DecoderError
from alignd.decoders.diverse_beam import DiverseBeam, DiverseBeamParams
from alignd.engines.protocol import SamplingConfig

from scripted_engine import ScriptedEngine

# Token ids of the scripted vocabulary "ab": 0 = EOS, 1 = "a", 2 = "b". The next-token table depends on the last
# token only, and no two paths of two tokens tie.
_ROOT = {1: math.log(0.6), 2: math.log(0.35), 0: math.log(0.05)}
_AFTER_A = {1: math.log(0.5), 2: math.log(0.45), 0: math.log(0.05)}


def _lm(prefix):
    return _AFTER_A if prefix and prefix[-1] == 1 else _ROOT


def _engine():
    return ScriptedEngine(vocab="ab", lm=_lm)


def _request(engine, max_tokens=2, n=1, prompt="b") -> DecodeRequest:
    ids = engine.tokenizer.encode(prompt)
    return DecodeRequest("dbs", ids, prompt, SamplingConfig(max_tokens=max_tokens), n)


async def test_plain_beam_search_by_hand():
    # B = 2, G = 1: paths aa .30, ab .27, ba .21, bb .1225 (EOS paths lower) -> "aa", "ab"
    engine = _engine()
    params = DiverseBeamParams(beam_width=2, groups=1, length_penalty=0.0)
    result = await DiverseBeam(params).decode(_request(engine, n=2), DecodeContext(engine))
    assert [c.text for c in result.candidates] == ["aa", "ab"]
    assert [c.score for c in result.candidates] == pytest.approx([math.log(0.30), math.log(0.27)])
    assert result.usage.engine_calls == 2  # one call per step for the single group


async def test_diversity_penalty_moves_the_second_group_by_hand():
    # G = 2 groups of 1, lambda = 10: group 2 may not reuse group 1's token at a step -> "b" then "b" (.1225)
    engine = _engine()
    params = DiverseBeamParams(beam_width=2, groups=2, diversity_penalty=10.0, length_penalty=0.0)
    result = await DiverseBeam(params).decode(_request(engine, n=2), DecodeContext(engine))
    assert [c.text for c in result.candidates] == ["aa", "bb"]
    assert result.candidates[1].score == pytest.approx(math.log(0.35 * 0.35))
    assert result.usage.engine_calls == 4  # one call per group per step
    same = DiverseBeamParams(beam_width=2, groups=2, diversity_penalty=0.0, length_penalty=0.0)
    result = await DiverseBeam(same).decode(_request(engine, n=2), DecodeContext(engine))
    assert [c.text for c in result.candidates] == ["aa", "aa"]  # without the penalty both groups agree


def test_params_are_validated():
    with pytest.raises(ValueError, match="divisible"):
        DiverseBeamParams(beam_width=4, groups=3)


async def test_n_over_beam_width_is_refused():
    engine = _engine()
    with pytest.raises(DecoderError):
        await DiverseBeam(DiverseBeamParams(beam_width=2, groups=1)).decode(
            _request(engine, n=3), DecodeContext(engine)
        )


PROMPTS = ["The quick brown fox", "Hello world, how", "Paris is the capital of", "One two three"]


@pytest.fixture(scope="module")
def oracle(tiny_llama):
    """vLLM's LLM.beam_search beams for widths 4 and 2 on PROMPTS (8 tokens, length_penalty 1)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    script = Path(__file__).with_name("vllm_beam_oracle.py")
    result = {}
    for width in (4, 2):
        out = subprocess.run(
            [sys.executable, str(script), str(tiny_llama), str(width), "8", "1.0", *map(json.dumps, ids)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        line = next(x for x in out.stdout.splitlines() if x.startswith("ORACLE "))
        result[width] = json.loads(line[len("ORACLE ") :])
    return ids, result


async def test_one_group_equals_vllm_beam_search(vllm_engine, oracle):
    ids, beams = oracle
    decoder = DiverseBeam(DiverseBeamParams(beam_width=4, groups=1))
    for i, prompt_ids in enumerate(ids):
        req = DecodeRequest(f"oracle-{i}", prompt_ids, PROMPTS[i], SamplingConfig(max_tokens=8), n=4)
        result = await decoder.decode(req, DecodeContext(vllm_engine))
        got = [
            c.token_ids + ([vllm_engine.tokenizer.eos_token_id] if c.finish_reason == "stop" else [])
            for c in result.candidates
        ]
        assert got == beams[4][i]


async def test_zero_penalty_groups_each_equal_a_narrower_vllm_beam_search(vllm_engine, oracle):
    ids, beams = oracle
    decoder = DiverseBeam(DiverseBeamParams(beam_width=4, groups=2, diversity_penalty=0.0))
    for i, prompt_ids in enumerate(ids):
        req = DecodeRequest(f"oracle0-{i}", prompt_ids, PROMPTS[i], SamplingConfig(max_tokens=8), n=4)
        result = await decoder.decode(req, DecodeContext(vllm_engine))
        got = sorted(tuple(c.token_ids) for c in result.candidates)
        want = sorted(tuple(b[:-1] if b and b[-1] == vllm_engine.tokenizer.eos_token_id else b) for b in beams[2][i])
        assert got == sorted(want * 2)


def _distinct2(texts_tokens):
    bigrams = [tuple(t[i : i + 2]) for t in texts_tokens for i in range(len(t) - 1)]
    return len(set(bigrams)) / max(len(bigrams), 1)


async def test_penalised_groups_are_more_diverse_than_plain_beam_search(vllm_engine):
    tok = vllm_engine.tokenizer
    plain = DiverseBeam(DiverseBeamParams(beam_width=4, groups=1))
    diverse = DiverseBeam(DiverseBeamParams(beam_width=4, groups=4, diversity_penalty=2.0))
    d_plain, d_diverse = [], []
    for i, prompt in enumerate(PROMPTS):
        req = DecodeRequest(f"div-{i}", tok.encode(prompt), prompt, SamplingConfig(max_tokens=10), n=4)
        d_plain.append(
            _distinct2([c.token_ids for c in (await plain.decode(req, DecodeContext(vllm_engine))).candidates])
        )
        d_diverse.append(
            _distinct2([c.token_ids for c in (await diverse.decode(req, DecodeContext(vllm_engine))).candidates])
        )
    assert sum(d_diverse) / len(d_diverse) > sum(d_plain) / len(d_plain)
