"""Schemas every OpenAI-compatible endpoint shares: stream options, chat messages and ``usage``.

Each endpoint family's own request and response schemas are in its folder (``completions/``, ``chat/``); requests
carry OpenAI's fields plus alignd's ``decoder``, ``reward`` and ``return_candidates`` (sent by the ``openai``
client through ``extra_body``), responses are valid OpenAI objects with one extra ``alignment`` object.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ..generation.protocol import StrictModel


class StreamOptions(StrictModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class TextPart(StrictModel):
    """A content part; alignd's models read text, so ``text`` is the only type accepted."""

    type: Literal["text"]
    text: str


class ChatMessageIn(StrictModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_template_message(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class UsageOut(BaseModel):
    """OpenAI's ``usage``: the prompts and the returned answers (what everything cost is in ``alignment``)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None
