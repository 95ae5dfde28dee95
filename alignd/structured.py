"""Answers of a required shape: structured outputs and tool calls, constrained, parsed and checked one way for
every decoder and every endpoint.

A request that asks for a shape (``response_format``, vLLM's ``structured_outputs``, ``tools`` with a
``tool_choice``, the Responses API's ``text.format``) becomes one :class:`AnswerFormat`. It gives:

* the engine :class:`~alignd.engines.protocol.Constraint` every candidate is sampled under, so a reward only ever
  chooses among answers of the right shape;
* :meth:`AnswerFormat.parse`: an answer as content and tool calls, with the reason it is not valid (JSON that
  does not parse or does not match its schema, a call to an unknown function, arguments the function's schema
  refuses). Decoders drop such candidates from selection, and the response reports the reason, never passing an
  invalid call on silently;
* :meth:`AnswerFormat.key`: the answer in canonical form (sorted keys, no whitespace), what voting counts.

Forced tool calls (``tool_choice`` ``required`` or a named function) are sampled under a JSON schema made from
the functions' parameter schemas, so their arguments are valid under the schema by construction; calls the
model writes freely (``auto``) are read with one of vLLM's tool parsers (the model's ``tool_call_parser``, as
vLLM's ``--tool-call-parser``) and checked against the schema.

>>> fmt = AnswerFormat(tools=(Function("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
...                                                    "required": ["city"]}),), tool_choice="get_weather")
>>> parsed = fmt.parse('{"city": "Paris"}')
>>> parsed.tool_calls[0].name, parsed.tool_calls[0].arguments, parsed.problem
('get_weather', '{"city": "Paris"}', None)
>>> fmt.parse('{"town": 1}').problem
"get_weather's arguments do not match its parameters: 'city' is a required property"
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .engines.protocol import Constraint, ConstraintKind

ToolChoice = Literal["none", "auto", "required"] | str
"""``none``, ``auto``, ``required``, or the name of the function that must be called."""


class FormatError(ValueError):
    """A shape that cannot be served (an invalid JSON schema, an unknown function); HTTP 400 on ``param``."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def check_schema(schema: Any, param: str) -> dict[str, Any]:
    """``schema`` if it is a valid JSON schema (draft 2020-12, which accepts the drafts OpenAI's schemas use)."""
    if not isinstance(schema, dict):
        raise FormatError("a JSON schema must be an object", param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise FormatError(f"invalid JSON schema{f' at {where}' if where else ''}: {exc.message}", param) from None
    return schema


def _violation(schema: dict[str, Any], value: Any) -> str | None:
    error = next(iter(sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: e.path)), None)
    return None if error is None else error.message


def canonical(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Function:
    """A function tool: its name, description and JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    description: str | None = None

    def as_template_tool(self) -> dict[str, Any]:
        """As chat templates read tools (OpenAI's shape)."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str
    """The arguments as a JSON text (OpenAI's shape)."""
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


@dataclass(slots=True)
class Parsed:
    """An answer read in its format: the text content (``None`` when it is only tool calls), the tool calls,
    and why it is not a valid answer of the format (``None``: it is)."""

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    problem: str | None = None
    value: Any = None
    """The parsed JSON of a structured answer (or the calls' ``[{name, arguments}]``), for canonical keys."""


class AnswerFormat:
    """The shape one request's answers must have; see the module's documentation.

    ``schema``: a JSON schema the answer must match; ``json_object``: any JSON object; ``tools`` with
    ``tool_choice``; ``parser``: a vLLM tool parser instance reading free-form calls (``auto``); ``constraint``:
    another engine constraint (``("regex", r"\\d+")``, ``("choice", [...])``, ``("grammar", ebnf)``).
    """

    def __init__(
        self,
        *,
        schema: dict[str, Any] | None = None,
        json_object: bool = False,
        tools: Sequence[Function] = (),
        tool_choice: ToolChoice = "auto",
        parallel_tool_calls: bool = True,
        parser: Any = None,
        constraint: tuple[ConstraintKind, Any] | None = None,
    ):
        self.schema, self.json_object = schema, json_object
        self._constraint = Constraint.of(*constraint) if constraint else None
        """A regex, choice or grammar: the engine's grammar is the only check of those."""
        self.tools = {f.name: f for f in tools}
        self.tool_choice = tool_choice if tools else "none"
        self.parallel = parallel_tool_calls
        self.parser = parser

    @property
    def forced(self) -> bool:
        """The answer is tool calls and nothing else (``required`` or a named function)."""
        return self.tool_choice not in ("none", "auto")

    @property
    def calls_tools(self) -> bool:
        return self.tool_choice != "none"

    def constraint(self) -> Constraint | None:
        """What the engine samples every candidate under."""
        if self.tool_choice == "required":
            return Constraint.of("json", self._calls_schema())
        if self.forced:
            return Constraint.of("json", self.tools[self.tool_choice].parameters)
        if self.tool_choice == "auto":
            return None  # free text with calls in the model's own syntax (a parser reads them)
        if self.schema is not None:
            return Constraint.of("json", self.schema)
        if self.json_object:
            return Constraint.of("json_object")
        return self._constraint

    def _calls_schema(self) -> dict[str, Any]:
        """``required``: a JSON array of ``{"name", "parameters"}`` calls, each valid under its function."""
        calls = [
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [f.name]}, "parameters": f.parameters},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for f in self.tools.values()
        ]
        schema: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        }
        if not self.parallel:
            schema["maxItems"] = 1
        return schema

    # ---- reading answers -------------------------------------------------------------------------------------

    def parse(self, text: str) -> Parsed:
        """``text`` (a whole answer) as content and tool calls, with the reason it is invalid if it is."""
        if self.forced:
            return self._forced(text)
        if self.tool_choice == "auto":
            return self._free_calls(text)
        if self.schema is None and not self.json_object:
            return Parsed(text)
        try:
            value = json.loads(text)
        except ValueError as exc:
            return Parsed(text, problem=f"the answer is not complete JSON ({exc.msg} at character {exc.pos})")
        if self.json_object and not isinstance(value, dict):
            return Parsed(text, problem="the answer is JSON but not an object", value=value)
        problem = _violation(self.schema, value) if self.schema is not None else None
        return Parsed(
            text, problem=f"the answer does not match the schema: {problem}" if problem else None, value=value
        )

    def problem(self, text: str) -> str | None:
        """Why ``text`` is not a valid answer of this format (``None``: it is)."""
        return self.parse(text).problem

    def key(self, text: str) -> str | None:
        """The answer in canonical form (what ``self_consistency`` votes on); ``None`` if it is not valid."""
        parsed = self.parse(text)
        if parsed.problem is not None:
            return None
        if parsed.tool_calls:
            return canonical([[c.name, json.loads(c.arguments)] for c in parsed.tool_calls])
        return canonical(parsed.value) if parsed.value is not None else (parsed.content or "").strip()

    def _forced(self, text: str) -> Parsed:
        try:
            value = json.loads(text)
        except ValueError as exc:
            value = _complete_items(text) if self.tool_choice == "required" else None
            if not value:
                return Parsed(text, problem=f"the tool call's JSON is not complete ({exc.msg} at character {exc.pos})")
        if self.tool_choice == "required":
            problem = _violation(self._calls_schema(), value)
            if problem is not None:
                return Parsed(text, problem=f"the tool calls do not match their functions: {problem}", value=value)
            calls = [ToolCall(c["name"], json.dumps(c["parameters"], ensure_ascii=False)) for c in value]
            return Parsed(None, calls, value=value)
        return self._checked(None, [(self.tool_choice, value)], value, text)

    def _free_calls(self, text: str) -> Parsed:
        if self.parser is None:
            return Parsed(text)
        try:
            info = self.parser.extract_tool_calls(text, None)
        except Exception as exc:  # noqa: BLE001 - a parser's failure is a problem with this answer, not the server
            return Parsed(text, problem=f"the tool-call parser failed: {exc}")
        if not info.tools_called:
            return Parsed(text)
        calls = []
        for call in info.tool_calls:
            try:
                calls.append((call.function.name, json.loads(call.function.arguments)))
            except ValueError:
                return Parsed(text, problem=f"{call.function.name}'s arguments are not JSON")
        return self._checked(info.content or None, calls, [{"name": n, "arguments": a} for n, a in calls], text)

    def _checked(self, content: str | None, calls: list[tuple[str, Any]], value: Any, text: str) -> Parsed:
        """The calls, if each names a tool and its arguments are valid; else the whole text, with the problem."""
        out = []
        for name, arguments in calls:
            function = self.tools.get(name)
            if function is None:
                return Parsed(text, problem=f"the answer calls {name!r}, which is not one of the tools", value=value)
            problem = _violation(function.parameters, arguments)
            if problem is not None:
                return Parsed(text, problem=f"{name}'s arguments do not match its parameters: {problem}", value=value)
            out.append(ToolCall(name, json.dumps(arguments, ensure_ascii=False)))
        if len(out) > 1 and not self.parallel:
            return Parsed(text, problem="the answer makes several calls; parallel_tool_calls is false", value=value)
        return Parsed(content, out, value=value)


def _complete_items(text: str) -> list[Any]:
    """The complete items at the start of a JSON array cut short (``[{...}, {...}, {"na``): the calls of a
    ``required`` answer that ran out of tokens while it wrote one more."""
    decoder, items, pos = json.JSONDecoder(), [], 1
    if not text.startswith("["):
        return []
    while True:
        try:
            item, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return items
        items.append(item)
        if text[pos : pos + 1] != ",":
            return items
        pos += 1


def tool_parser(name: str, hf_tokenizer: Any, tools: Sequence[Function]) -> Any:
    """An instance of vLLM's tool parser ``name`` (``hermes``, ``llama3_json``...) for one request's tools."""
    try:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionToolsParam
        from vllm.tool_parsers import ToolParserManager
    except ImportError as exc:  # pragma: no cover - vLLM is an extra
        raise FormatError(f"tool_call_parser {name!r} needs vLLM installed: {exc}", "tool_choice") from None
    try:
        cls = ToolParserManager.get_tool_parser(name)
    except KeyError:
        raise FormatError(f"tool_call_parser {name!r} is not one of vLLM's tool parsers", "tool_choice") from None
    return cls(hf_tokenizer, [ChatCompletionToolsParam(**f.as_template_tool()) for f in tools])


def parser_names() -> list[str]:
    """vLLM's tool parsers (empty without vLLM)."""
    try:
        from vllm.tool_parsers import ToolParserManager
    except ImportError:  # pragma: no cover
        return []
    return sorted(ToolParserManager.list_registered())


# ---- tools in the prompt, for chat templates that do not render them ------------------------------------------


def tool_instructions(tools: Sequence[dict[str, Any]]) -> str:
    """A system text describing ``tools`` (OpenAI's tool objects) and how to call them, in the Hermes format that
    the ``hermes`` tool parser reads: one ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` per call."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        f"You may call these functions:\n<tools>\n{listed}\n</tools>\n"
        'To call one, answer <tool_call>{"name": <name>, "arguments": <arguments object>}</tool_call>'
    )


def hermes_messages(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with ``tools`` and the history's tool calls and results written as text (Hermes format), for
    a chat template that only renders ``role`` and ``content``: the tools in the system message, an assistant's
    calls as ``<tool_call>`` blocks, a tool's result as a ``<tool_response>`` block."""
    out: list[dict[str, Any]] = []
    for m in messages:
        content = m.get("content") or ""
        if m.get("tool_calls"):
            calls = [
                json.dumps({"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])})
                for c in m["tool_calls"]
            ]
            content = "\n".join([content] * bool(content) + [f"<tool_call>\n{c}\n</tool_call>" for c in calls])
        elif m["role"] == "tool":
            content = f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": m["role"], "content": content})
    if tools:
        text = tool_instructions(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` for a chat template that renders tools itself: tool-call arguments as objects (as Hugging
    Face templates read them), not JSON text."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [
                {**c, "function": {**c["function"], "arguments": _arguments(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
