"""The OpenAI-compatible API through the official ``openai`` client, against a real server on real vLLM."""

from __future__ import annotations

import json
import math

import openai
import pytest

from serverproc import metric


def test_models_lists_the_served_model(openai_client):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_completion_basic_fields_and_usage(openai_client):
    out = openai_client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=5, temperature=0)
    assert out.object == "text_completion" and out.model == "tiny"
    [choice] = out.choices
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 0 and 0 < out.usage.completion_tokens <= 5
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    extra = out.model_extra["alignment"]
    assert extra["decoder"] == "sample" and extra["usage"]["engine_calls"] == 1


def test_completion_greedy_is_deterministic_and_seed_reproduces(openai_client):
    kw = dict(model="tiny", prompt="Hello world", max_tokens=8)
    a = openai_client.completions.create(temperature=0, **kw).choices[0].text
    b = openai_client.completions.create(temperature=0, **kw).choices[0].text
    assert a == b
    s1 = [c.text for c in openai_client.completions.create(n=3, seed=11, temperature=1.0, **kw).choices]
    s2 = [c.text for c in openai_client.completions.create(n=3, seed=11, temperature=1.0, **kw).choices]
    assert s1 == s2 and len(s1) == 3


def test_completion_logprobs_shape(openai_client):
    out = openai_client.completions.create(model="tiny", prompt="Hello", max_tokens=4, logprobs=3, temperature=0)
    lp = out.choices[0].logprobs
    n = len(lp.tokens)
    assert n == out.usage.completion_tokens
    assert len(lp.token_logprobs) == n and len(lp.top_logprobs) == n and len(lp.text_offset) == n
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and len(top) == 3
        # greedy: the chosen token is the most likely one, and it is listed among the top 3 under its own name
        assert math.isclose(value, max(top.values()), rel_tol=1e-5)
        assert math.isclose(top[token], value, rel_tol=1e-5)


def test_completion_stop_string_is_honoured(openai_client):
    full = openai_client.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0).choices[0].text
    assert len(full) > 3
    stop = full[2:4]
    out = openai_client.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0, stop=[stop])
    assert out.choices[0].finish_reason == "stop"
    assert stop not in out.choices[0].text
    assert full.startswith(out.choices[0].text)


def test_completion_several_prompts(openai_client):
    out = openai_client.completions.create(
        model="tiny", prompt=["Hello", "The sun"], max_tokens=3, n=2, temperature=0.7, seed=1
    )
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]


def test_chat_completion_with_logprobs(openai_client):
    out = openai_client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    assert out.object == "chat.completion"
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert len(choice.logprobs.content) == out.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)


def test_streaming_completion_matches_non_streaming(openai_client):
    kw = dict(model="tiny", prompt="Paris is the capital", max_tokens=10, temperature=0)
    whole = openai_client.completions.create(**kw)
    chunks = list(openai_client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]


def test_a_streamed_answer_counts_the_prompt_tokens_the_prefix_cache_served(openai_client):
    kw = dict(model="tiny", prompt="A long shared opening, told once more. " * 8, max_tokens=2, temperature=0)
    whole = openai_client.completions.create(**kw)  # the prompt now sits in the prefix cache
    chunks = list(openai_client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    cached = chunks[-1].usage.prompt_tokens_details.cached_tokens
    assert cached >= 32 and cached == openai_client.completions.create(**kw).usage.prompt_tokens_details.cached_tokens
    assert whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens


def test_streaming_chat_is_valid_sse_ending_in_done(server):
    with (
        server.client() as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True},
        ) as resp,
    ):
        assert resp.status_code == 200
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_best_of_n_through_extra_body(openai_client):
    out = openai_client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Write something"}],
        max_tokens=12,
        seed=3,
        extra_body={
            "decoder": {"name": "best_of_n", "num_candidates": 6},
            "reward": "length",
            "return_candidates": True,
        },
    )
    alignment = out.model_extra["alignment"]
    candidates = alignment["candidates"]
    assert len(candidates) == 6
    best = max(c["reward"] for c in candidates)
    assert alignment["choices"][0]["reward"] == best == len(out.choices[0].message.content)
    assert alignment["usage"]["engine_calls"] == 1 and alignment["usage"]["reward_calls"] == 1
    assert alignment["usage"]["candidates_scored"] == 6


def test_best_of_n_streams_the_chosen_answer(openai_client):
    kw = dict(
        model="tiny",
        prompt="Once upon",
        max_tokens=10,
        seed=5,
        extra_body={"decoder": {"name": "best_of_n", "num_candidates": 4}, "reward": "length"},
    )
    whole = openai_client.completions.create(**kw)
    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == whole.choices[0].text


def test_weighted_rewards_and_request_keywords(openai_client):
    out = openai_client.completions.create(
        model="tiny",
        prompt="Tell me",
        max_tokens=8,
        seed=2,
        extra_body={
            "decoder": {"name": "best_of_n", "num_candidates": 4},
            "reward": [
                {"name": "length", "weight": 0.5},
                {"name": "keywords", "weight": 2, "params": {"keywords": ["the"]}},
            ],
            "return_candidates": True,
        },
    )
    for c in out.model_extra["alignment"]["candidates"]:
        assert math.isclose(c["reward"], 0.5 * c["rewards"]["length"] + 2 * c["rewards"]["keywords"])


# ---- errors, through the client's exception classes ----------------------------------------------------------


def test_unknown_model_is_404_naming_the_field(openai_client):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert err.value.body["param"] == "model"


def test_unknown_decoder_and_reward_are_404(openai_client):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"decoder": "nope"})
    assert err.value.body["param"] == "decoder"
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.completions.create(
            model="tiny", prompt="x", max_tokens=2, extra_body={"decoder": "best_of_n", "reward": "nope"}
        )
    assert err.value.body["param"] == "reward"


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 9}, "n"),
        ({"max_tokens": 600}, "max_tokens"),
        ({"logprobs": 25}, "logprobs"),
        ({"stop": ["a"] * 9}, "stop"),
        (
            {"extra_body": {"decoder": {"name": "best_of_n", "num_candidates": 17}, "reward": "length"}},
            "decoder.num_candidates",
        ),
        (
            {"extra_body": {"decoder": {"name": "best_of_n", "num_candidats": 2}, "reward": "length"}},
            "decoder.num_candidats",
        ),
        ({"extra_body": {"decoder": "best_of_n"}}, "reward"),
    ],
)
def test_bad_requests_are_400_with_param(openai_client, fields, param):
    kw = {"model": "tiny", "prompt": "Hello", "max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.completions.create(**kw)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param, err.value.body


def test_context_overflow_is_400_on_max_tokens_before_the_engine(server, openai_client):
    before = metric(server, "alignd_engine_calls_total")
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.completions.create(model="tiny", prompt="word " * 400, max_tokens=300)
    assert err.value.body["param"] == "max_tokens"
    assert metric(server, "alignd_engine_calls_total") == before


def test_nan_and_malformed_json_are_bounded_400s(server):
    with server.client() as http:
        r = http.post(
            "/v1/completions",
            content=b'{"model": "tiny", "prompt": "x", "temperature": NaN}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
        big = b'{"prompt": "' + b"x" * (1 << 20) + b'", "max_tokens": "many"'
        r = http.post("/v1/completions", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 400 and len(r.content) < 2048
        assert "Traceback" not in r.text and "/work" not in r.text
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": "many"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        assert http.get("/health").status_code == 200


def test_missing_api_key_is_401_but_health_and_metrics_are_public(server):
    import httpx

    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    client = openai.OpenAI(base_url=server.v1, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Rome", "Oslo"]}}, "required": ["city"]},
    },
}


def _parrot_call(openai_client, said: str, **kw):
    """The test decoder ``parrot`` answers with the user's message: an answer written to order, as a model's."""
    return openai_client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": said}],
        tools=[WEATHER_TOOL],
        extra_body={"decoder": "parrot"},
        **kw,
    )


def test_calls_written_freely_are_parsed_checked_and_never_passed_on_invalid(openai_client):
    good = _parrot_call(
        openai_client, 'On it.<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    )
    [choice] = good.choices
    [call] = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Rome"})
    assert choice.message.content == "On it." and choice.finish_reason == "tool_calls"
    assert good.model_extra["alignment"]["choices"][0]["invalid"] is None
    for said, why in [
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}</tool_call>', "do not match"),
        ('<tool_call>{"name": "launch", "arguments": {}}</tool_call>', "not one of the tools"),
    ]:
        bad = _parrot_call(openai_client, said)
        [choice] = bad.choices
        assert not choice.message.tool_calls and choice.message.content == said and choice.finish_reason == "stop"
        assert why in bad.model_extra["alignment"]["choices"][0]["invalid"]
    streamed = _parrot_call(
        openai_client, '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', stream=True
    )
    chunks = list(streamed)
    # as OpenAI streams a call: a chunk opens it (id, name, no arguments yet), the next carries its arguments,
    # and the last, empty, says tool_calls
    opened, arguments = [
        c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    assert opened.index == arguments.index == 0 and opened.id.startswith("call_") and arguments.id is None
    assert opened.function.name == "get_weather" and opened.function.arguments == ""
    assert json.loads(arguments.function.arguments) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and not chunks[-1].choices[0].delta.tool_calls


def test_several_prompts_share_one_budget_where_rewards_spread(openai_client):
    prompts = ["Hello", "The quick brown fox", "Once upon a time"]
    body = {"decoder": {"name": "best_of_n", "num_candidates": 4, "allocate": True, "pilot": 2}, "reward": "length"}
    out = openai_client.completions.create(model="tiny", prompt=prompts, max_tokens=12, seed=1, extra_body=body)
    infos = out.model_extra["alignment"]["info"]
    assert len(out.choices) == 3 and [i["pilot"] for i in infos] == [2, 2, 2]
    assert all(i["samples"] == 2 + i["allocated"] for i in infos)
    # the two extra samples per prompt fixed best-of-4 would draw, moved by the pilots' spread of rewards
    assert sum(i["allocated"] for i in infos) >= 1
    # a budget is one for the request: with allocate it bounds them together
    capped = openai_client.completions.create(
        model="tiny", prompt=prompts, max_tokens=12, seed=1, extra_body={**body, "budget": {"max_engine_tokens": 150}}
    )
    assert capped.model_extra["alignment"]["usage"]["engine_new_tokens"] <= 150 + 12
    streamed = list(
        openai_client.completions.create(
            model="tiny", prompt=prompts, max_tokens=12, seed=1, stream=True, extra_body=body
        )
    )
    texts = {c.choices[0].index: c.choices[0].text for c in streamed if c.choices}
    assert [texts[i] for i in range(3)] == [c.text for c in out.choices]
