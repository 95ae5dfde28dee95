"""Answering ``POST /v1/chat/completions``: the ``chat.completion`` object, whole or as ``chat.completion.chunk``s
(a role chunk first for each answer, then its content as it comes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ....decoders import Candidate, DecodeResult
from ....engines.protocol import StreamDelta
from ...generation.formatting import chat_logprobs, choices, envelope, parsed
from ...generation.serving import Prepared, PromptEcho
from ...generation.streaming import sse
from ..serving import ChunkWriter
from .protocol import ChatCompletionResponse


def chat_response(
    prepared: Prepared, results: Sequence[DecodeResult], logprobs_k: int | None, with_candidates: bool
) -> ChatCompletionResponse:
    """The ``chat.completion`` of a request's results: an assistant message per answer, with its chat log-probs
    when ``logprobs`` asked for them."""
    tok = prepared.engine.tokenizer
    out = []
    for index, _, c in choices(prepared, results):
        message, finish_reason = assistant_message(prepared, c)
        logprobs = None
        if logprobs_k is not None:
            logprobs = chat_logprobs(tok, c.token_ids, c.logprobs, c.top_logprobs, logprobs_k)
        out.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason})
    return ChatCompletionResponse(choices=out, **envelope(prepared, results, with_candidates))


def assistant_message(prepared: Prepared, c: Candidate) -> tuple[dict[str, Any], str | None]:
    """An answer as the assistant's message (its content and tool calls) and its ``finish_reason``
    (``tool_calls`` when it calls tools)."""
    answer = parsed(prepared, c)
    calls = [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in answer.tool_calls
    ]
    finish = "tool_calls" if calls and c.finish_reason == "stop" else c.finish_reason
    return {"role": "assistant", "content": answer.content, "tool_calls": calls}, finish


class ChatChunks(ChunkWriter):
    """``chat.completion.chunk``s: each answer opens with its role, then its content and log-probs as they come."""

    object = "chat.completion.chunk"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.started: set[int] = set()
        fmt = self.prepared.plan.answer_format
        self.tools = fmt if fmt is not None and fmt.calls_tools else None
        """With tools, an answer is read whole before it is sent: its content and calls come in one delta."""
        self.held: dict[int, str] = {}

    def echo(self, prompt_index: int, e: PromptEcho) -> list[str]:
        return []  # chat never echoes its messages

    def delta(self, prompt_index: int, d: StreamDelta) -> list[str]:
        index = prompt_index * self.prepared.n + d.index
        if not d.text and d.finish_reason is None and self.k is None:
            return []  # a token that ends mid-character: its text arrives with the next one
        out: list[str] = []
        if index not in self.started:
            self.started.add(index)
            first = {
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            out.append(sse({**self.base(), "choices": [first]}))
        logprobs = None
        if self.k is not None:
            logprobs = chat_logprobs(self.tok, d.token_ids, d.logprobs, d.top_logprobs, self.k)
        delta: dict[str, Any] = {"content": d.text} if d.text else {}
        finish = d.finish_reason
        if self.tools is not None:
            self.held[index] = self.held.get(index, "") + d.text
            if d.finish_reason is None:
                return out  # log-probs of a held answer are not streamed; ask without stream for them
            answer = self.tools.parse(self.held.pop(index))
            # As OpenAI streams calls: the content, then per call a chunk that opens it (id, name, empty
            # arguments) and one with its arguments, then an empty delta with the finish reason.
            parts: list[dict[str, Any]] = [{"content": answer.content}] if answer.content else []
            for i, c in enumerate(answer.tool_calls):
                opened = {"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}
                parts.append({"tool_calls": [opened]})
                parts.append({"tool_calls": [{"index": i, "function": {"arguments": c.arguments}}]})
            for part in parts:
                chunk = {"index": index, "delta": part, "logprobs": None, "finish_reason": None}
                out.append(sse({**self.base(), "choices": [chunk]}))
            delta = {}
            if answer.tool_calls:
                finish = "tool_calls" if d.finish_reason == "stop" else d.finish_reason
            logprobs = None
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        out.append(sse({**self.base(), "choices": [choice]}))
        return out
