"""Request fields that ask for an answer of a given shape, and the one function that turns them into an
:class:`~alignd.structured.AnswerFormat`: OpenAI's ``response_format``, vLLM's ``structured_outputs``, and function
``tools`` with ``tool_choice`` and ``parallel_tool_calls``.

Every problem is a 400 naming the field: an invalid JSON schema, two constraints at once, a named tool choice that
names no tool, ``tool_choice: auto`` on a model with no tool-call parser.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from ...structured import AnswerFormat, FormatError, Function, check_schema
from ..errors import BadRequest
from .strict import StrictModel


class JsonSchemaFormat(StrictModel):
    """``response_format.json_schema``: a named JSON schema (``strict`` is always honoured: the engine enforces
    the schema token by token)."""

    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    """OpenAI's ``response_format``: ``text`` (free text), ``json_object`` (any JSON object) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format type json_schema needs json_schema.schema")
        return self


class StructuredOutputs(StrictModel):
    """vLLM's ``structured_outputs``: exactly one of ``json`` (a schema), ``regex``, ``choice``, ``grammar`` (EBNF)
    or ``json_object``."""

    model_config = ConfigDict(
        allow_inf_nan=False,
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": [k]} for k in ("json", "regex", "choice", "grammar", "json_object")]},
    )

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = Field(None, max_length=10_000)
    choice: list[str] | None = Field(None, min_length=1, max_length=1000)
    grammar: str | None = Field(None, max_length=100_000)
    json_object: bool | None = None
    disable_any_whitespace: bool | None = None
    """Accepted and ignored, as vLLM 0.32 does: whitespace is the engine's setting
    (``engine_args.structured_outputs_config``; alignd's default is JSON without whitespace)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [
            k for k in ("json_", "regex", "choice", "grammar", "json_object") if getattr(self, k) not in (None, False)
        ]
        if len(given) != 1:
            raise ValueError("structured_outputs takes exactly one of json, regex, choice, grammar, json_object")
        return self


class FunctionDef(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(StrictModel):
    """A chat tool: ``{"type": "function", "function": {...}}``."""

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    """``{"type": "function", "function": {"name": ...}}``: this function must be called."""

    type: Literal["function"]
    function: NamedFunction


ToolChoiceIn = Literal["none", "auto", "required"] | NamedToolChoice


def answer_format(
    response_format: ResponseFormat | None,
    structured_outputs: StructuredOutputs | None,
    functions: list[FunctionDef] | None = None,
    tool_choice: str | None = None,
    parallel_tool_calls: bool = True,
    *,
    format_param: str = "response_format",
    tools_param: str = "tools",
) -> tuple[AnswerFormat | None, str]:
    """The request's answer format (``None``: free text) and the field a refusal about it names."""
    try:
        return _answer_format(
            response_format, structured_outputs, functions, tool_choice, parallel_tool_calls, format_param, tools_param
        )
    except FormatError as exc:
        raise BadRequest(str(exc), param=exc.param) from None


def _answer_format(
    response_format: ResponseFormat | None,
    structured_outputs: StructuredOutputs | None,
    functions: list[FunctionDef] | None,
    tool_choice: str | None,
    parallel: bool,
    format_param: str,
    tools_param: str,
) -> tuple[AnswerFormat | None, str]:
    shaped = response_format is not None and response_format.type != "text"
    if shaped and structured_outputs is not None:
        raise FormatError(f"set {format_param} or structured_outputs, not both", "structured_outputs")
    tools = [
        Function(
            f.name, check_schema(f.parameters or {"type": "object"}, f"{tools_param}.{i}.parameters"), f.description
        )
        for i, f in enumerate(functions or [])
    ]
    if len({f.name for f in tools}) != len(tools):
        raise FormatError("two tools have the same name", tools_param)
    choice = tool_choice or ("auto" if tools else "none")
    if choice not in ("none", "auto", "required") and choice not in {f.name for f in tools}:
        raise FormatError(f"tool_choice names {choice!r}, which is not one of the tools", "tool_choice")
    if choice == "required" and not tools:
        raise FormatError("tool_choice 'required' needs tools", "tool_choice")
    if tools and choice != "none":
        if shaped or structured_outputs is not None:
            raise FormatError(
                f"{format_param} and tool calls cannot both shape the answer; set tool_choice to 'none' or drop "
                f"{format_param}",
                format_param if shaped else "structured_outputs",
            )
        return AnswerFormat(tools=tools, tool_choice=choice, parallel_tool_calls=parallel), "tool_choice"
    if structured_outputs is not None:
        return _vllm_format(structured_outputs), "structured_outputs"
    if not shaped:
        return None, format_param
    assert response_format is not None
    if response_format.type == "json_object":
        return AnswerFormat(json_object=True), format_param
    assert response_format.json_schema is not None
    schema = check_schema(response_format.json_schema.schema_, format_param)
    return AnswerFormat(schema=schema), format_param


def _vllm_format(s: StructuredOutputs) -> AnswerFormat:
    """vLLM's ``structured_outputs``; a regex, choice or grammar constrains the engine, and is not re-checked
    here (the engine's grammar is the check)."""
    if s.json_ is not None:
        schema = s.json_ if isinstance(s.json_, dict) else _loads(s.json_)
        return AnswerFormat(schema=check_schema(schema, "structured_outputs.json"))
    if s.json_object:
        return AnswerFormat(json_object=True)
    if s.regex is not None:
        try:
            re.compile(s.regex)
        except re.error as exc:
            raise FormatError(f"invalid regular expression: {exc}", "structured_outputs.regex") from None
        return AnswerFormat(constraint=("regex", s.regex))
    if s.choice is not None:
        return AnswerFormat(constraint=("choice", s.choice))
    return AnswerFormat(constraint=("grammar", s.grammar))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise FormatError("structured_outputs.json must be a JSON schema", "structured_outputs.json") from None
