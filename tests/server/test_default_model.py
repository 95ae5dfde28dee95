"""End to end on the default model (SmolLM2-135M-Instruct from its PyPI wheel): prepare, serve, answer, judge."""

from __future__ import annotations

import openai
import pytest

from alignd.engines.models import DEFAULT_MODEL, prepare_default_model

from serverproc import start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    prepare_default_model()  # ~20 s the first time, then reused from $ALIGND_HOME
    # The server's own defaults: the default model, the judge/length/keywords rewards; only the port is set.
    server = start_server({}, tmp_path_factory.mktemp("default"))
    yield server
    stop_server(server)


def test_default_model_answers_correctly(default_server):
    client = openai.OpenAI(base_url=default_server.v1, api_key="unused", max_retries=0, timeout=120)
    out = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20,
        temperature=0,
    )
    assert "Paris" in out.choices[0].message.content


def test_best_of_n_with_the_model_as_its_own_judge(default_server):
    client = openai.OpenAI(base_url=default_server.v1, api_key="unused", max_retries=0, timeout=300)
    out = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=16,
        seed=0,
        extra_body={
            "decoder": {"name": "best_of_n", "num_candidates": 4},
            "reward": "judge",
            "return_candidates": True,
        },
    )
    alignment = out.model_extra["alignment"]
    assert len(alignment["candidates"]) == 4
    assert alignment["choices"][0]["reward"] == max(c["reward"] for c in alignment["candidates"])


def test_judge_prefers_the_right_answer(default_server):
    with default_server.client() as http:
        r = http.post(
            "/v1/rewards/judge/score",
            json={
                "prompt": "What is the capital of France?",
                "completions": ["The capital of France is Paris.", "I like turtles."],
            },
        )
    right, off_topic = r.json()["scores"]
    assert right > off_topic
