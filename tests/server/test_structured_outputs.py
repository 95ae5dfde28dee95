"""Structured outputs, tool calls and the Responses API through the official ``openai`` client, on real vLLM
(the tiny model: random weights, so only the engine's constraint can make its answers valid)."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from conftest import tiny_config
from serverproc import API_KEY, start_server, stop_server


@pytest.fixture(scope="module")
def server(tiny_llama, tiny_classifier, tmp_path_factory):
    """The tiny model with its whole 1,024-token context: its 512-token vocabulary spells tool schemas long."""
    config = tiny_config(tiny_llama, tiny_classifier)
    config["models"]["tiny"]["engine_args"]["max_model_len"] = 1024
    proc = start_server(config, tmp_path_factory.mktemp("structured"))
    yield proc
    stop_server(proc)


@pytest.fixture
def openai_client(server):
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


class Verdict(BaseModel):
    answer: Literal["yes", "no", "maybe"]
    sure: bool


CITY = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}, "metric": {"type": "boolean"}},
    "required": ["city", "metric"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": CITY}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]},
        },
    },
]
ASK = [{"role": "user", "content": "Will it rain in Paris tomorrow?"}]


def test_parse_returns_the_pydantic_object(openai_client):
    out = openai_client.chat.completions.parse(
        model="tiny", messages=ASK, response_format=Verdict, max_tokens=60, seed=1
    )
    message = out.choices[0].message
    assert isinstance(message.parsed, Verdict)
    assert Verdict.model_validate_json(message.content) == message.parsed
    assert out.model_extra["alignment"]["choices"][0]["invalid"] is None


def test_every_best_of_n_candidate_is_valid_under_the_schema(openai_client):
    out = openai_client.chat.completions.parse(
        model="tiny",
        messages=ASK,
        response_format=Verdict,
        max_tokens=60,
        extra_body={
            "decoder": {"name": "best_of_n", "num_candidates": 4},
            "reward": "length",
            "return_candidates": True,
        },
    )
    assert isinstance(out.choices[0].message.parsed, Verdict)
    candidates = out.model_extra["alignment"]["candidates"]
    assert len(candidates) == 4
    for c in candidates:
        Verdict.model_validate_json(c["text"])
        assert c["invalid"] is None


# Every decoder that extends a committed part of the answer, small enough for the tiny model: its random weights
# never close a JSON object unaided, so a parsed answer means the grammar followed every committed token.
CONTINUING = [
    {"name": "deal", "top_k": 3, "lookahead": 4, "beam": 2},
    {"name": "deal", "top_k": 3, "lookahead": 4, "commit": "segment"},
    {"name": "transfer_q", "top_k": 3, "rollout_tokens": 4, "mode": "sample"},
    {"name": "args", "top_k": 4},
    {"name": "blockwise_best_of_n", "num_candidates": 3, "block": 6},
    {"name": "blockwise_best_of_n", "num_candidates": 3, "block": 6, "first_block": 1, "first_token": "one_step"},
    {"name": "speculative_rejection", "num_candidates": 4, "chunk": 5},
    {"name": "diverse_beam", "beam_width": 4, "groups": 2},
    {"name": "step_beam", "beam_width": 2, "expansions": 2, "max_step_tokens": 8},
    {"name": "particle_filter", "particles": 3, "max_step_tokens": 8},
    {"name": "qalign", "steps": 3},
]


@pytest.mark.parametrize("decoder", CONTINUING, ids=lambda d: "-".join(str(v) for v in d.values())[:40])
def test_decoders_that_extend_committed_prefixes_keep_the_schema(openai_client, decoder):
    out = openai_client.chat.completions.parse(
        model="tiny",
        messages=ASK,
        response_format=Verdict,
        max_tokens=60,
        seed=2,
        extra_body={"decoder": decoder, "reward": "length", "return_candidates": True},
    )
    assert isinstance(out.choices[0].message.parsed, Verdict), out.choices[0].message.content
    alignment = out.model_extra["alignment"]
    assert alignment["decoder"] == decoder["name"] and alignment["choices"][0]["invalid"] is None


def _named_weather_call(openai_client, seed: int, **extra_body):
    """A call forced to get_weather: the one call, its finish reason, arguments valid under its schema."""
    out = openai_client.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
        seed=seed,
        extra_body=extra_body or None,
    )
    [choice] = out.choices
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and choice.finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), CITY)


# one of each kind of prefix extension: a token search (deal), whole blocks, reasoning steps
@pytest.mark.parametrize("decoder", [CONTINUING[i] for i in (0, 4, 8)], ids=lambda d: d["name"])
def test_forced_tool_calls_through_decoders_that_extend_committed_prefixes(openai_client, decoder):
    _named_weather_call(openai_client, 4, decoder=decoder, reward="length")


def test_decoders_publish_what_they_keep_to_a_shape(server):
    decoders = {
        d["name"]: d["supports"]
        for d in httpx.get(f"{server.v1}/decoders", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]
    }
    assert decoders["best_of_n"]["structured_output"] and not decoders["best_of_n"]["continues_prefix"]
    assert decoders["deal"]["structured_output"] and decoders["deal"]["continues_prefix"]


def test_invalid_schemas_and_conflicting_shapes_are_400s_naming_the_field(openai_client):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model="tiny", messages=ASK, response_format=bad)
    assert err.value.body["param"] == "response_format" and "invalid JSON schema" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}
        )
    assert err.value.body["param"] == "tool_choice"


def test_vllm_structured_outputs_on_completions_and_align(server, openai_client):
    out = openai_client.completions.create(
        model="tiny",
        prompt="Pick one:",
        max_tokens=10,
        n=3,
        seed=3,
        extra_body={"structured_outputs": {"choice": ["red", "green"]}},
    )
    assert {c.text for c in out.choices} <= {"red", "green"}
    out = openai_client.completions.create(
        model="tiny", prompt="A number:", max_tokens=12, extra_body={"structured_outputs": {"regex": "[0-9]{3}"}}
    )
    assert len(out.choices[0].text) == 3 and out.choices[0].text.isdigit()
    r = httpx.post(
        f"{server.v1}/align",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={
            "prompt": "Verdict:",
            "max_tokens": 60,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "v", "schema": Verdict.model_json_schema()},
            },
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    Verdict.model_validate_json(r.json()["choices"][0]["text"])


def test_self_consistency_votes_on_canonical_tool_calls(openai_client):
    out = openai_client.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=80,
        extra_body={"decoder": {"name": "self_consistency", "max_samples": 6, "round_size": 3}},
    )
    [choice] = out.choices
    assert choice.finish_reason == "tool_calls"
    info = out.model_extra["alignment"]["info"]
    winner = json.loads(info["winner"])
    assert [[c.function.name, json.loads(c.function.arguments)] for c in choice.message.tool_calls] == winner


def test_a_named_tool_choice_returns_arguments_valid_under_the_schema(openai_client):
    for seed in range(3):
        _named_weather_call(openai_client, seed)


def test_streamed_tool_calls_assemble_in_the_clients_stream_helper(openai_client):
    with openai_client.chat.completions.stream(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, seed=5
    ) as stream:
        final = stream.get_final_completion()
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call.function.name)
        jsonschema.validate(json.loads(call.function.arguments), schema)


def test_tool_history_is_accepted(openai_client):
    messages = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "metric": true}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    ]
    out = openai_client.chat.completions.create(
        model="tiny", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=5
    )
    assert out.choices[0].message.tool_calls in (None, [])


def test_responses_create_plain_and_with_best_of_n(openai_client):
    out = openai_client.responses.create(model="tiny", input="Say hello", instructions="Be brief.", max_output_tokens=8)
    assert out.status in ("completed", "incomplete") and out.output_text
    assert out.usage.output_tokens == out.model_extra["alignment"]["usage"]["completion_tokens"]
    best = openai_client.responses.create(
        model="tiny",
        input="Say hello",
        max_output_tokens=8,
        extra_body={"decoder": {"name": "best_of_n", "num_candidates": 3}, "reward": "length"},
    )
    assert best.model_extra["alignment"]["decoder"] == "best_of_n" and best.output_text


def test_responses_parse_with_a_schema_and_function_calls(openai_client):
    out = openai_client.responses.parse(model="tiny", input="Verdict?", text_format=Verdict, max_output_tokens=60)
    assert isinstance(out.output_parsed, Verdict)
    tools = [{"type": "function", **t["function"]} for t in TOOLS]
    called = openai_client.responses.create(
        model="tiny", input="Weather?", tools=tools, tool_choice="required", max_output_tokens=80
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and all(json.loads(c.arguments) is not None for c in calls)
    # The call and its output fed back, as an agent loop does
    follow = openai_client.responses.create(
        model="tiny",
        input=[
            {"role": "user", "content": "Weather?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": calls[0].name,
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "rain"},
        ],
        tools=tools,
        tool_choice="none",
        max_output_tokens=5,
    )
    assert follow.status in ("completed", "incomplete")


def test_responses_stream_events_assemble(openai_client):
    # Plain text: the tiny model writes until max_output_tokens, so the stream ends with response.incomplete
    with openai_client.responses.stream(model="tiny", input="Say hello", max_output_tokens=10) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.incomplete" and [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and events[-1].response.output[0].content[0].text == deltas
    # A schema through best_of_n: the answer closes, and the helper assembles the completed response
    with openai_client.responses.stream(
        model="tiny",
        input="Verdict?",
        text_format=Verdict,
        max_output_tokens=60,
        extra_body={"decoder": {"name": "best_of_n", "num_candidates": 2}, "reward": "length"},
    ) as stream:
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, Verdict) and final.status == "completed"
    assert final.model_extra["alignment"]["decoder"] == "best_of_n"


def test_tool_results_must_answer_a_call_and_formats_must_be_known(openai_client):
    orphan = ASK + [{"role": "tool", "tool_call_id": "nope", "content": "rain"}]
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model="tiny", messages=orphan, tools=TOOLS, max_tokens=4)
    assert err.value.body["param"] == "messages.1.tool_call_id" and "answers no tool call" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # a tool message that names no call at all
        openai_client.chat.completions.create(model="tiny", messages=ASK + [{"role": "tool", "content": "rain"}])
    assert err.value.body["param"] == "messages.1.tool_call_id"
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.responses.create(
            model="tiny",
            input=[{"type": "function_call_output", "call_id": "c9", "output": "rain"}],
            max_output_tokens=4,
        )
    assert err.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.responses.create(model="tiny", input="Hi", text={"format": {"type": "xml"}}, max_output_tokens=4)
    assert err.value.body["param"].startswith("text.format")


def test_responses_refuse_what_is_not_kept(openai_client):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.responses.create(model="tiny", input="Hi", previous_response_id="resp_123")
    assert err.value.body["param"] == "previous_response_id"
