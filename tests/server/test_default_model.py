"""End to end on the default model (SmolLM2-135M-Instruct from its PyPI wheel): prepare, serve, answer, judge."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from alignd.engines.models import DEFAULT_MODEL, prepare_default_model

from serverproc import launch_vllm_server, stop_server, wait_healthy

pytestmark = pytest.mark.slow


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


@pytest.fixture(scope="module")
def vllm_default(tmp_path_factory):
    """vLLM's own OpenAI server on the default model, the reference for echo with log-probs."""
    folder = prepare_default_model()
    server = launch_vllm_server(
        folder,
        tmp_path_factory.mktemp("vllm-default") / "vllm.log",
        # alignd's engines write JSON without whitespace; vLLM sets that per server
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
        served_name="smollm2",
    )
    wait_healthy([server])
    yield server
    stop_server(server)


@pytest.mark.parametrize(
    "prompt",
    [
        "The capital of France is",
        ["Water boils at", "One, two, three, four,"],
        [1, 504, 3458, 282, 4649, 314],  # token ids
    ],
    ids=["text", "two-prompts", "token-ids"],
)
@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_with_logprobs_agrees_with_vllms_own_server(default_server, vllm_default, prompt, max_tokens):
    """Evaluation harnesses score multiple choice and perplexity with echo + logprobs: the same numbers as vLLM."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "echo": True, "logprobs": 3, "temperature": 0}
    ours = httpx.post(default_server.url + "/v1/completions", json=body, timeout=120).json()
    theirs = httpx.post(vllm_default.url + "/v1/completions", json={**body, "model": "smollm2"}, timeout=120).json()
    assert len(ours["choices"]) == len(theirs["choices"]) == (2 if isinstance(prompt, list) and len(prompt) == 2 else 1)
    for mine, ref in zip(ours["choices"], theirs["choices"]):
        assert mine["text"] == ref["text"]
        a, b = mine["logprobs"], ref["logprobs"]
        assert a["tokens"] == b["tokens"] and a["text_offset"] == b["text_offset"]
        assert a["token_logprobs"][0] is None and b["token_logprobs"][0] is None
        assert a["token_logprobs"][1:] == pytest.approx(b["token_logprobs"][1:], abs=1e-3)
        for row, ref_row in zip(a["top_logprobs"][1:], b["top_logprobs"][1:]):
            assert set(row) == set(ref_row)
            assert [row[k] for k in ref_row] == pytest.approx(list(ref_row.values()), abs=1e-3)
    # what was returned; vLLM also counts the one token it generates to read the prompt at max_tokens=0, which
    # alignd reports as engine work
    assert ours["usage"]["completion_tokens"] == max_tokens * len(ours["choices"])
    assert ours["alignment"]["usage"]["engine_by_source"]["prompt_logprobs"]["completion_tokens"] == len(
        ours["choices"]
    )


def test_a_greedy_structured_output_agrees_with_vllms_own_server(default_server, vllm_default):
    schema = {
        "type": "object",
        "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
        "required": ["country", "capital"],
    }
    body = {
        "prompt": "The capital of France, as JSON with country and capital:",
        "max_tokens": 40,
        "temperature": 0,
        "structured_outputs": {"json": schema},
    }
    ours = httpx.post(default_server.url + "/v1/completions", json=body, timeout=120).json()
    theirs = httpx.post(vllm_default.url + "/v1/completions", json={**body, "model": "smollm2"}, timeout=120).json()
    assert ours["choices"][0]["text"] == theirs["choices"][0]["text"]
    assert json.loads(ours["choices"][0]["text"])["capital"]


def test_every_offline_reward_kind_is_declared_and_models_load_on_first_use(default_server):
    before = default_server.log_text()
    assert "SentenceTransformer" not in before  # the embedding reward is declared, but nothing loaded it yet
    with default_server.client() as http:
        kinds = {r["name"]: r["kind"] for r in http.get("/v1/rewards").json()["data"]}
        assert {"embedding", "json_schema", "regex", "sum", "sentiment"} <= set(kinds.values())
        q = "How do I bake bread?"

        def score(name, completions, **params):
            r = http.post(f"/v1/rewards/{name}/score", json={"prompt": q, "completions": completions, "params": params})
            assert r.status_code == 200, r.text
            return r.json()["scores"]

        on, off = score("relevance", ["Mix flour, water and yeast, then bake it.", "Jupiter has many moons."])
        assert on > off
        schema = {"type": "object", "required": ["steps"]}
        assert score("json", ['{"steps": 3}', '{"n": 1}', "no"], json_schema=schema) == [1.0, 0.5, 0.0]
        assert score("no_refusal", ["Knead the dough.", "Sorry, I can't help with that."]) == [1.0, 0.0]
        short, long = score("judge_concise", ["Bake it.", "Bake it. " * 40])
        assert short > long
        # the model is surer of a plain answer than of the same words scrambled (no reward model involved)
        plain, scrambled = score("self_certainty", ["Mix flour, water and yeast.", "yeast water Mix and flour,."])
        assert plain > scrambled
    assert "SentenceTransformer" in default_server.log_text()[len(before) :]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}


def test_structured_answers_and_forced_tool_calls_on_the_default_model(default_server):
    """vLLM 0.32's own server (hermes parser, greedy) answers the forced calls below with the arguments
    ``"\\"Boston\\""``, not an object: alignd's are valid under the function's schema."""
    from pydantic import BaseModel

    class Capital(BaseModel):
        country: str
        capital: str

    client = openai.OpenAI(base_url=default_server.v1, api_key="unused", max_retries=0, timeout=300)
    ask = [{"role": "user", "content": "What is the capital of France? Answer in JSON with country and capital."}]
    out = client.chat.completions.parse(
        model=DEFAULT_MODEL, messages=ask, response_format=Capital, max_tokens=40, temperature=0
    )
    assert out.choices[0].message.parsed.capital == "Paris"
    # through a token-level search: DeAL's lookaheads continue the grammar over the tokens it committed
    out = client.chat.completions.parse(
        model=DEFAULT_MODEL,
        messages=ask,
        response_format=Capital,
        max_tokens=40,
        extra_body={"decoder": {"name": "deal", "top_k": 4, "lookahead": 4}, "reward": "length"},
    )
    assert out.choices[0].message.parsed.capital == "Paris"
    weather = [{"role": "user", "content": "What's the weather like in Boston today?"}]
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        out = client.chat.completions.create(
            model=DEFAULT_MODEL, messages=weather, tools=[WEATHER], tool_choice=choice, max_tokens=60, temperature=0
        )
        calls = out.choices[0].message.tool_calls
        assert calls and out.choices[0].finish_reason in ("tool_calls", "length")  # required: calls until cut short
        for call in calls:
            arguments = json.loads(call.function.arguments)
            assert call.function.name == "get_weather" and isinstance(arguments, dict) and "city" in arguments
    # auto: the model reads the tools from its system message; whatever it writes, a call it returns is valid and
    # an invalid one is reported, never passed on
    out = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=weather, tools=[WEATHER], max_tokens=60, n=4, seed=0, temperature=0.8
    )
    for index, c in enumerate(out.choices):
        report = out.model_extra["alignment"]["choices"][index]["invalid"]
        for call in c.message.tool_calls or []:
            assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
        assert report is None or not c.message.tool_calls
