"""Answer formats by hand: what is constrained, what parses, what is refused and why."""

from __future__ import annotations

import json

import pytest

from alignd.structured import AnswerFormat, FormatError, Function, check_schema, hermes_messages, tool_parser

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = Function("get_weather", CITY, "The weather in a city")
TIME = Function("get_time", {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]})


def test_a_schema_constrains_and_checks_every_answer():
    fmt = AnswerFormat(schema=CITY)
    assert fmt.constraint().kind == "json" and fmt.constraint().schema == CITY
    assert fmt.parse('{"city": "Paris"}').problem is None
    assert "required property" in fmt.parse('{"town": "Paris"}').problem
    assert "not complete JSON" in fmt.parse('{"city": "Par').problem
    assert fmt.key('{ "city":"Paris" }') == fmt.key('{"city": "Paris"}') == '{"city":"Paris"}'
    assert fmt.key('{"town": 1}') is None  # invalid answers get no vote


def test_json_object_accepts_any_object_only():
    fmt = AnswerFormat(json_object=True)
    assert fmt.constraint().vllm_fields() == {"json_object": True}
    assert fmt.parse('{"a": [1]}').problem is None
    assert fmt.parse("[1, 2]").problem == "the answer is JSON but not an object"


def test_invalid_schemas_are_refused_naming_the_field():
    with pytest.raises(FormatError) as err:
        check_schema({"type": "objekt"}, "response_format")
    assert err.value.param == "response_format" and "invalid JSON schema" in str(err.value)
    with pytest.raises(FormatError):
        check_schema(["not", "a", "schema"], "tools.0.parameters")


def test_a_named_tool_choice_samples_the_arguments_under_their_schema():
    fmt = AnswerFormat(tools=[WEATHER, TIME], tool_choice="get_time")
    assert fmt.forced and fmt.constraint().schema == TIME.parameters
    [call] = fmt.parse('{"zone": "UTC"}').tool_calls
    assert call.name == "get_time" and json.loads(call.arguments) == {"zone": "UTC"}
    assert call.id.startswith("call_")
    truncated = fmt.parse('{"zone": "U')
    assert truncated.tool_calls == [] and truncated.content == '{"zone": "U' and "not complete" in truncated.problem


def test_required_is_one_or_more_calls_each_valid_under_its_function():
    fmt = AnswerFormat(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    schema = fmt.constraint().schema
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    assert [c["properties"]["name"]["enum"] for c in schema["items"]["anyOf"]] == [["get_weather"], ["get_time"]]
    [call] = fmt.parse('[{"name": "get_weather", "parameters": {"city": "Oslo"}}]').tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert fmt.parse('[{"name": "get_weather", "parameters": {"zone": "UTC"}}]').problem is not None
    assert fmt.parse("[]").problem is not None
    # The same calls, however spaced or ordered, are one vote
    a = fmt.key('[{"name": "get_weather", "parameters": {"city": "Oslo"}}]')
    b = fmt.key('[{"parameters":{"city":"Oslo"},"name":"get_weather"}]')
    assert a == b == '[["get_weather",{"city":"Oslo"}]]'


def test_free_calls_are_read_with_vllms_parser_and_checked(tiny_llama):
    from transformers import AutoTokenizer

    tools = [WEATHER, TIME]
    fmt = AnswerFormat(
        tools=tools, tool_choice="auto", parser=tool_parser("hermes", AutoTokenizer.from_pretrained(tiny_llama), tools)
    )
    assert fmt.constraint() is None  # the model writes calls in its own syntax
    good = fmt.parse('Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>')
    assert good.problem is None and good.content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in good.tool_calls] == [("get_weather", {"city": "Rome"})]
    unknown = fmt.parse('<tool_call>{"name": "launch", "arguments": {}}</tool_call>')
    assert unknown.tool_calls == [] and "not one of the tools" in unknown.problem
    wrong = fmt.parse('<tool_call>{"name": "get_time", "arguments": {"zone": 3}}</tool_call>')
    assert "get_time's arguments do not match" in wrong.problem
    plain = fmt.parse("It is sunny.")
    assert plain.problem is None and plain.tool_calls == [] and plain.content == "It is sunny."
    with pytest.raises(FormatError):
        tool_parser("no-such-parser", None, tools)


def test_tools_and_past_calls_are_written_for_templates_without_them():
    history = [
        {"role": "user", "content": "Weather in Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    ]
    out = hermes_messages(history, [WEATHER.as_template_tool()])
    assert (
        out[0]["role"] == "system" and '"name": "get_weather"' in out[0]["content"] and "<tools>" in out[0]["content"]
    )
    assert out[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    assert out[3] == {"role": "tool", "content": "<tool_response>\nsunny\n</tool_response>"}


def test_required_calls_cut_short_keep_the_complete_ones():
    fmt = AnswerFormat(tools=[WEATHER], tool_choice="required")
    cut = '[{"name":"get_weather","parameters":{"city":"Oslo"}},{"name":"get_weather","parameters":{"ci'
    parsed = fmt.parse(cut)
    assert parsed.problem is None and [json.loads(c.arguments) for c in parsed.tool_calls] == [{"city": "Oslo"}]
    assert fmt.parse('[{"name":"get_weather","parameters":{"ci').problem is not None
