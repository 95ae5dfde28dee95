"""The ``prm`` reward on a tiny randomly initialised process reward model (Qwen2.5-Math-PRM's layout): the same
step scores through transformers, vLLM's pooling runner in process, and a real vLLM pooling server."""

from __future__ import annotations

import json

import pytest

from alignd.rewards import build_reward

from tiny_models import PRM_STEP_TAG

QUESTION = "What is two plus three?"
ANSWERS = [
    "Two plus three.\n\nThat is five.",
    "The sun is hot.",
    "One two three.\n\nFour five.\n\nFive.\n\n",
]


@pytest.fixture(scope="module")
async def transformers_prm(tiny_prm):
    reward = build_reward("prm", {"type": "prm", "path": str(tiny_prm), "step_tag": PRM_STEP_TAG})
    await reward.start()
    return reward


async def test_every_step_is_scored_at_its_tag_and_aggregated(transformers_prm):
    steps = await transformers_prm.step_scores(QUESTION, ANSWERS)
    assert [len(s) for s in steps] == [2, 1, 3]  # one score per step, empty pieces are not steps
    assert all(0.0 <= v <= 1.0 for s in steps for v in s)  # softmax probabilities of label 1
    assert await transformers_prm.score(QUESTION, ANSWERS) == [s[-1] for s in steps]
    lowest = transformers_prm.with_overrides({"aggregate": "min"})
    assert await lowest.score(QUESTION, ANSWERS) == [min(s) for s in steps]
    # a step's score depends only on what precedes its tag: the first step scores the same in both answers
    first = await transformers_prm.step_scores(QUESTION, ["Two plus three.", ANSWERS[0]])
    assert first[0][0] == pytest.approx(first[1][0], abs=1e-5)


async def test_transformers_and_vllms_pooling_runner_agree(transformers_prm, tiny_prm):
    vllm = build_reward(
        "prm-vllm",
        {
            "type": "prm",
            "backend": "vllm",
            "path": str(tiny_prm),
            "step_tag": PRM_STEP_TAG,
            "max_length": 512,
            "engine_args": {"kv_cache_memory_bytes": 64 << 20},
        },
    )
    await vllm.start()
    try:
        want = await transformers_prm.step_scores(QUESTION, ANSWERS)
        got = await vllm.step_scores(QUESTION, ANSWERS)
    finally:
        await vllm.close()
    for mine, theirs in zip(got, want):
        assert mine == pytest.approx(theirs, abs=1e-4)


async def test_a_remote_vllm_pooling_server_gives_the_same_step_scores(transformers_prm, tiny_prm, tmp_path):
    from transformers import AutoTokenizer

    from serverproc import launch_vllm_server, stop_server, wait_healthy

    # the server pools at the PRM's step tag (vLLM's default is Qwen's <extra_0>, id 151651)
    tag_id = AutoTokenizer.from_pretrained(tiny_prm).convert_tokens_to_ids(PRM_STEP_TAG)
    pooler = ["--pooler-config", json.dumps({"step_tag_id": tag_id})]
    log = tmp_path / "vllm.log"
    [server] = wait_healthy([launch_vllm_server(tiny_prm, log, "--runner", "pooling", *pooler, served_name="prm")])
    try:
        remote = build_reward(
            "prm-remote",
            {
                "type": "prm",
                "backend": "remote",
                "path": str(tiny_prm),
                "url": server.url,
                "model": "prm",
                "step_tag": PRM_STEP_TAG,
            },
        )
        await remote.start()
        got = await remote.step_scores(QUESTION, ANSWERS)
        await remote.close()
    finally:
        stop_server(server)
    want = await transformers_prm.step_scores(QUESTION, ANSWERS)
    for mine, theirs in zip(got, want):
        assert mine == pytest.approx(theirs, abs=1e-4)
