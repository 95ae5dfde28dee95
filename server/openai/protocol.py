"""Schemas every OpenAI-compatible endpoint shares: stream options, chat messages and ``usage``.

Each endpoint family's own request and response schemas are in its folder (``completions/``, ``chat/``); requests
carry OpenAI's fields plus alignd's ``decoder``, ``reward`` and ``return_candidates`` (sent by the ``openai``
client through ``extra_body``), responses are valid OpenAI objects with one extra ``alignment`` object.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ..errors import BadRequest, Unsupported
from ..generation.protocol import StrictModel


class StreamOptions(StrictModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class TextPart(StrictModel):
    """A content part; alignd's models read text, so ``text`` is the only type accepted."""

    type: Literal["text"]
    text: str


class MediaPart(StrictModel):
    """An image, audio, video or file part: accepted by the schema so the answer can say what is missing (501)."""

    type: Literal["image_url", "input_audio", "audio_url", "video_url", "file", "input_image", "input_file"]


def refuse_media(parts: list[Any], param: str) -> None:
    """A 501 naming the first media part: alignd serves text models."""
    for i, part in enumerate(parts):
        if isinstance(part, MediaPart):
            raise Unsupported(
                f"{part.type} content is not supported: alignd serves text-only models", param=f"{param}.{i}.type"
            )


def check_tool_results(messages: list[Any], param: str = "messages") -> None:
    """Every ``tool`` message answers a call an earlier assistant turn made (400 naming the message otherwise)."""
    calls: set[str] = set()
    for i, m in enumerate(messages):
        for call in m.tool_calls or []:
            calls.add(call.id)
        if m.role != "tool":
            continue
        if m.tool_call_id is None:
            raise BadRequest(
                "a tool message needs the tool_call_id of the call it answers", param=f"{param}.{i}.tool_call_id"
            )
        if m.tool_call_id not in calls:
            raise BadRequest(
                f"tool_call_id {m.tool_call_id!r} answers no tool call of an earlier assistant message",
                param=f"{param}.{i}.tool_call_id",
            )


class FunctionCallIn(StrictModel):
    name: str
    arguments: str
    """The arguments as a JSON text."""


class ToolCallIn(StrictModel):
    """A tool call an assistant turn of the history made."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(StrictModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart | MediaPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    """An assistant turn's tool calls."""
    tool_call_id: str | None = None
    """A ``tool`` turn: the call it answers."""

    def as_template_message(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content if isinstance(part, TextPart))
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": content or ""}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class UsageOut(BaseModel):
    """OpenAI's ``usage``: the prompts and the returned answers (what everything cost is in ``alignment``)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None
