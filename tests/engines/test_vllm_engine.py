"""The in-process vLLM adapter on the tiny Llama: batching, log-probs, continuation scoring, abort, errors."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from alignd.engines.protocol import EngineRequestError, SamplingConfig


async def test_generate_batches_prompts_and_returns_n_each(vllm_engine):
    tok = vllm_engine.tokenizer
    prompts = [tok.encode("Hello world"), tok.encode("The sun rises")]
    gens = await vllm_engine.generate(prompts, SamplingConfig(n=3, max_tokens=5, seed=1), "eng-batch")
    assert [g.prompt_token_ids for g in gens] == prompts
    assert all(len(g.completions) == 3 for g in gens)
    assert all(c.num_tokens == 5 and c.finish_reason == "length" for g in gens for c in g.completions)


async def test_equal_prompts_of_one_call_are_seeded_apart(vllm_engine):
    # vLLM seeds a request's j-th completion seed + j; every prompt of a call would otherwise start at the same
    # seed, and a resampled particle and its copy would never diverge. Prompt k starts past the k * n before it.
    ids = vllm_engine.tokenizer.encode("The sea")
    params = SamplingConfig(n=2, max_tokens=8, temperature=1.0, seed=3)
    both = await vllm_engine.generate([ids, ids], params, "seeds")
    texts = [c.text for g in both for c in g.completions]
    assert len(set(texts)) == 4
    [alone] = await vllm_engine.generate([ids], params.but(n=4), "seeds-alone")
    assert [c.text for c in alone.completions] == texts  # seeds 3, 4 and 5, 6 either way


async def test_greedy_logprobs_are_the_top_of_each_row(vllm_engine):
    tok = vllm_engine.tokenizer
    [gen] = await vllm_engine.generate(
        [tok.encode("Hello")], SamplingConfig(max_tokens=6, temperature=0, logprobs=4), "eng-lp"
    )
    c = gen.completions[0]
    assert len(c.logprobs) == len(c.top_logprobs) == c.num_tokens
    for token, lp, row in zip(c.token_ids, c.logprobs, c.top_logprobs):
        assert row[token] == lp == max(row.values())
    assert math.isclose(c.cumulative_logprob, sum(c.logprobs), rel_tol=1e-4)


async def test_continuation_logprobs_match_the_sampled_tokens(vllm_engine):
    """Teacher-forced scoring of a greedy continuation gives back the log-probs the sampler reported."""
    tok = vllm_engine.tokenizer
    prompt = tok.encode("The quick brown fox")
    [gen] = await vllm_engine.generate([prompt], SamplingConfig(max_tokens=5, temperature=0, logprobs=0), "eng-cl")
    c = gen.completions[0]
    [scored] = await vllm_engine.continuation_logprobs([prompt], [c.token_ids], "eng-cl2")
    assert scored == pytest.approx(c.logprobs, abs=1e-3)


async def test_exact_token_logprobs_for_a_judge(vllm_engine):
    tok = vllm_engine.tokenizer
    ids = (5, 6, 7)
    [gen] = await vllm_engine.generate(
        [tok.encode("Hello")], SamplingConfig(max_tokens=1, temperature=0, logprob_token_ids=ids), "eng-ids"
    )
    row = gen.completions[0].top_logprobs[0]
    assert set(ids) <= set(row)
    [scored] = await vllm_engine.continuation_logprobs([tok.encode("Hello")], [[6]], "eng-ids2")
    assert row[6] == pytest.approx(scored[0], abs=1e-3)


async def test_stream_yields_the_same_tokens_as_generate(vllm_engine):
    tok = vllm_engine.tokenizer
    params = SamplingConfig(max_tokens=8, temperature=0)
    [gen] = await vllm_engine.generate([tok.encode("One two")], params, "eng-s1")
    tokens = []
    async for delta in vllm_engine.stream(tok.encode("One two"), params, "eng-s2"):
        tokens.extend(delta.token_ids)
    assert tokens == gen.completions[0].token_ids


async def test_a_stream_reports_the_prompt_tokens_served_from_the_prefix_cache(vllm_engine):
    prompt = vllm_engine.tokenizer.encode("The same long opening, read again and again. " * 6)
    params = SamplingConfig(max_tokens=4, temperature=0)
    for round_ in ("first", "again"):
        deltas = [d async for d in vllm_engine.stream(prompt, params, f"eng-cached-{round_}")]
        reported = [d.num_cached_tokens for d in deltas if d.num_cached_tokens is not None]
        assert len(reported) == 1 and deltas[0].num_cached_tokens == reported[0]  # once, on the first delta
    assert reported[0] >= 32  # the second time, at least one whole 32-token block came from the cache
    [gen] = await vllm_engine.generate([prompt], params, "eng-cached-generate")
    assert gen.num_cached_tokens == reported[0]


async def test_cancel_aborts_every_child_request(vllm_engine):
    tok = vllm_engine.tokenizer
    long = SamplingConfig(n=2, max_tokens=400, ignore_eos=True)
    task = asyncio.create_task(vllm_engine.generate([tok.encode("a"), tok.encode("b")], long, "eng-cancel"))
    # Cancel while both are running: a fixed pause let the tiny model finish 400 tokens first on a fast machine.
    while vllm_engine._llm.get_num_unfinished_requests() < 2 and not task.done():
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)
    assert vllm_engine._llm.get_num_unfinished_requests() == 0


async def test_invalid_requests_are_request_errors_and_the_context_bounds_an_answer(vllm_engine):
    # The context check belongs to Decoder.prepare, before any work; an engine given more never runs past it.
    tok = vllm_engine.tokenizer
    prompt = tok.encode("Hello")
    [gen] = await vllm_engine.generate(
        [prompt], SamplingConfig(max_tokens=10_000, ignore_eos=True, temperature=0.0), "eng-long"
    )
    assert gen.completions[0].finish_reason == "length"
    assert len(prompt) + gen.completions[0].num_tokens == vllm_engine.info.max_model_len
    with pytest.raises(EngineRequestError) as err:
        await vllm_engine.generate([prompt], SamplingConfig(max_tokens=2, logprobs=500), "eng-lp500")
    assert err.value.param == "logprobs"
    await vllm_engine.check_health()


_LIFECYCLE = """
import asyncio, os, stat, sys
from pathlib import Path
from alignd.engines.vllm_local import VLLMEngine

def sockets():
    return [p for p in Path(os.environ["VLLM_RPC_BASE_PATH"]).iterdir() if stat.S_ISSOCK(p.stat().st_mode)]

async def main():
    args = {"dtype": "float32", "max_model_len": 512, "kv_cache_memory_bytes": 64 << 20}
    engine = VLLMEngine("tiny", sys.argv[1], args)
    await engine.start()
    print("sockets while running:", len(sockets()))
    await engine.shutdown()

asyncio.run(main())
"""


def test_an_engine_leaves_no_socket_files_behind(tiny_llama):
    """vLLM binds its IPC sockets as files in the temp folder and does not remove them when an engine shuts down;
    alignd gives them a folder of the process's own, removed when it exits, and removes folders that processes
    which died (a dead pid in the name) left behind. (A temp folder of its own, short: a socket path is at most
    107 characters.)"""
    tmp_path = Path(tempfile.mkdtemp(dir="/tmp"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"alignd-vllm-{dead.pid}-left"
    stale.mkdir()
    (stale / "socket-file").touch()
    env = {k: v for k, v in os.environ.items() if k != "VLLM_RPC_BASE_PATH"} | {"TMPDIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _LIFECYCLE, str(tiny_llama)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sockets while running: 0" not in out.stdout and "sockets while running:" in out.stdout
    left = [p for p in tmp_path.rglob("*") if p.is_socket() or p.name.startswith("alignd-vllm-")]
    shutil.rmtree(tmp_path)
    assert left == []
