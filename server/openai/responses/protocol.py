"""Schemas of ``POST /v1/responses``: OpenAI's Responses request and ``response`` object, as vLLM serves them.

The request maps onto the chat machinery: ``instructions`` and ``input`` (a string, or message, function-call and
function-call-output items) become a conversation, ``text.format`` a response format, flat function ``tools`` the
chat's tools, ``max_output_tokens`` the answer's length. alignd's ``decoder``, ``reward``, ``budget`` and
``return_candidates`` are the chat endpoint's, and the response carries the same ``alignment`` object.

Nothing is stored: ``store`` is accepted and answered ``false`` (as vLLM without its response store), and
``previous_response_id`` is refused with a 400: send the conversation's items in ``input`` instead.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ....structured import AnswerFormat
from ...errors import BadRequest
from ...generation.formats import FunctionDef, ResponseFormat, answer_format
from ...generation.protocol import Alignment, SamplingFields
from ...generation.strict import StrictModel
from ..protocol import ChatMessageIn, FunctionCallIn, MediaPart, ToolCallIn, check_tool_results, refuse_media


class InputText(StrictModel):
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(StrictModel):
    """A turn: ``{"role": "user", "content": "..."}`` or with ``input_text``/``output_text`` parts."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputText | MediaPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, InputText))


class FunctionCallItem(StrictModel):
    """A function call the model made earlier, fed back with the conversation."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(StrictModel):
    """A function call's result."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText]

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(union_mode="left_to_right")]


class TextFormat(StrictModel):
    """``text.format``: ``text``, ``json_object``, or ``json_schema`` with its fields flat."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(None, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(StrictModel):
    format: TextFormat | None = None
    verbosity: str | None = None


class FunctionTool(FunctionDef):
    """A Responses function tool: ``{"type": "function", "name", "parameters", ...}`` (flat, unlike chat's)."""

    type: Literal["function"]


class NamedFunctionChoice(StrictModel):
    type: Literal["function"]
    name: str


class ResponsesRequest(SamplingFields):
    """``POST /v1/responses``."""

    model_config = ConfigDict(  # merged into StrictModel's
        json_schema_extra={
            "examples": [
                {"input": "Name a fruit.", "max_output_tokens": 8},
                {
                    "input": [{"role": "user", "content": "A verdict?"}],
                    "text": {"format": {"type": "json_schema", "name": "v", "schema": {"type": "object"}}},
                    "max_output_tokens": 16,
                },
            ]
        },
    )

    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool = True
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    background: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None

    @model_validator(mode="after")
    def _resolve(self) -> ResponsesRequest:
        if self.max_output_tokens is not None:
            self.max_tokens = self.max_output_tokens
        return self

    def refuse_unsupported(self) -> None:
        if self.previous_response_id is not None:
            raise BadRequest(
                "alignd stores no responses, so previous_response_id cannot be resumed; send the conversation's "
                "items in input instead",
                param="previous_response_id",
            )
        if self.background:
            raise BadRequest("background responses are not supported; set background: false", param="background")
        if self.n != 1:
            raise BadRequest("the Responses API returns one answer; set n to 1", param="n")
        for i, item in enumerate(self.input if isinstance(self.input, list) else []):
            if isinstance(item, MessageItem) and isinstance(item.content, list):
                refuse_media(item.content, f"input.{i}.content")
        if self.top_logprobs:
            raise BadRequest(
                "log-probs are not returned on /v1/responses; use /v1/chat/completions", param="top_logprobs"
            )

    def answer_format(self) -> tuple[AnswerFormat | None, str]:
        fmt = self.text.format if self.text else None
        response_format = None
        if fmt is not None and fmt.type != "text":
            schema = {"name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}
            try:
                response_format = ResponseFormat(
                    type=fmt.type, json_schema=schema if fmt.type == "json_schema" else None
                )
            except ValueError:
                raise BadRequest("text.format type json_schema needs a schema", param="text.format") from None
        choice = self.tool_choice
        name = choice.name if isinstance(choice, NamedFunctionChoice) else choice
        return answer_format(
            response_format,
            self.structured_outputs,
            list(self.tools or []),
            name,
            self.parallel_tool_calls,
            format_param="text.format",
        )

    def template_tools(self) -> tuple[dict[str, Any], ...]:
        """The tools as the prompt shows them (chat's shape): none when ``tool_choice`` is ``none``."""
        if not self.tools or self.tool_choice == "none":
            return ()
        return tuple(
            {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type", "strict"})}
            for t in self.tools
        )

    def messages(self) -> list[ChatMessageIn]:
        """``instructions`` and ``input`` as a chat conversation: consecutive function calls become one assistant
        turn's tool calls, each output a ``tool`` turn."""
        out: list[ChatMessageIn] = []
        if self.instructions:
            out.append(ChatMessageIn(role="system", content=self.instructions))
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        for item in items:
            if isinstance(item, MessageItem):
                out.append(ChatMessageIn(role=item.role, content=item.text()))
            elif isinstance(item, FunctionCallItem):
                call = ToolCallIn(id=item.call_id, function=FunctionCallIn(name=item.name, arguments=item.arguments))
                if out and out[-1].role == "assistant" and out[-1].tool_calls is not None:
                    out[-1].tool_calls.append(call)
                else:
                    out.append(ChatMessageIn(role="assistant", content=None, tool_calls=[call]))
            else:
                out.append(ChatMessageIn(role="tool", content=item.text(), tool_call_id=item.call_id))
        try:
            check_tool_results(out)
        except BadRequest as exc:  # name the input item, not the conversation alignd made of it
            raise BadRequest(str(exc).replace("tool_call_id", "call_id"), param="input") from None
        if not out:
            raise BadRequest("input has no items", param="input")
        return out


# ---- the response -------------------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["completed", "incomplete"] = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["completed"] = "completed"


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class Response(BaseModel):
    """OpenAI's ``response`` object, plus ``alignment``."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    model: str
    output: list[OutputMessage | OutputFunctionCall]
    usage: ResponseUsage | None = None
    incomplete_details: dict[str, str] | None = None
    error: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    store: bool = False
    truncation: str = "disabled"
    reasoning: dict[str, Any] | None = None
    alignment: Alignment | None = None
