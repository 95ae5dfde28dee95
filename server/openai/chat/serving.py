"""Answering ``POST /v1/chat/completions``: the ``chat.completion`` object, whole or as ``chat.completion.chunk``s
(a role chunk first for each answer, then its content as it comes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ....decoders import DecodeResult
from ....engines.protocol import StreamDelta
from ...generation.formatting import chat_logprobs, choices, envelope
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
    out = [
        {
            "index": index,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": chat_logprobs(tok, c.token_ids, c.logprobs, c.top_logprobs, logprobs_k or 0)
            if logprobs_k is not None
            else None,
            "finish_reason": c.finish_reason,
        }
        for index, _, c in choices(prepared, results)
    ]
    return ChatCompletionResponse(choices=out, **envelope(prepared, results, with_candidates))


class ChatChunks(ChunkWriter):
    """``chat.completion.chunk``s: each answer opens with its role, then its content and log-probs as they come."""

    object = "chat.completion.chunk"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.started: set[int] = set()

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
        choice = {
            "index": index,
            "delta": {"content": d.text} if d.text else {},
            "logprobs": logprobs,
            "finish_reason": d.finish_reason,
        }
        out.append(sse({**self.base(), "choices": [choice]}))
        return out
