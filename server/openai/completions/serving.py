"""Answering ``POST /v1/completions``: the ``text_completion`` object, whole or as stream chunks (``echo`` puts the
prompt, and with ``logprobs`` its tokens' log-probs, before each answer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ....decoders import DecodeResult
from ....engines.protocol import StreamDelta
from ...generation.formatting import choices, completion_logprobs, echoed, envelope, prompt_rows
from ...generation.serving import Prepared, PromptEcho
from ...generation.streaming import sse
from ..serving import ChunkWriter
from .protocol import CompletionResponse


def completion_response(
    prepared: Prepared, results: Sequence[DecodeResult], logprobs_k: int | None, with_candidates: bool
) -> CompletionResponse:
    """The ``text_completion`` of a request's results: a choice per answer of every prompt (after its prompt with
    ``echo``), with the completions log-prob table when ``logprobs`` asked for one."""
    tok = prepared.engine.tokenizer
    echo = prepared.plan.echo
    out = []
    for index, p, c in choices(prepared, results):
        text, logprobs = c.text, None
        if logprobs_k is not None:
            ids, own, rows = list(c.token_ids), list(c.logprobs or []), list(c.top_logprobs or [])
            if echo:
                prompt_ids = prepared.prompts[p][0]
                p_own, p_rows = prompt_rows(prompt_ids, results[p].prompt_logprobs or [None] * len(prompt_ids))
                ids, own, rows = prompt_ids + ids, p_own + own, p_rows + rows
            logprobs = completion_logprobs(tok, ids, own, rows)
        if echo:
            text = echoed(prepared, p) + text
        out.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason})
    return CompletionResponse(choices=out, **envelope(prepared, results, with_candidates))


class CompletionChunks(ChunkWriter):
    """``text_completion`` chunks: each answer's text as it comes, with its tokens' log-probs and text offsets."""

    object = "text_completion"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.offsets: dict[int, int] = {}

    def echo(self, prompt_index: int, e: PromptEcho) -> list[str]:
        """The prompt, once per answer of it, before its first token (``echo``)."""
        out = []
        for j in range(self.prepared.n):
            index = prompt_index * self.prepared.n + j
            logprobs = None
            if self.k is not None:
                own, rows = prompt_rows(e.token_ids, e.rows or [None] * len(e.token_ids))
                logprobs = completion_logprobs(self.tok, e.token_ids, own, rows)
                self.offsets[index] = sum(len(t) for t in logprobs["tokens"]) if logprobs else 0
            finish = "length" if e.finished else None
            choice = {"index": index, "text": e.text, "logprobs": logprobs, "finish_reason": finish}
            out.append(sse({**self.base(), "choices": [choice]}))
        return out

    def delta(self, prompt_index: int, d: StreamDelta) -> list[str]:
        index = prompt_index * self.prepared.n + d.index
        if not d.text and d.finish_reason is None and self.k is None:
            return []  # a token that ends mid-character: its text arrives with the next one
        offset = self.offsets.get(index, 0)
        logprobs = None
        if self.k is not None:
            logprobs = completion_logprobs(self.tok, d.token_ids, d.logprobs, d.top_logprobs, offset)
            self.offsets[index] = offset + sum(len(t) for t in logprobs["tokens"]) if logprobs else offset
        choice = {"index": index, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish_reason}
        return [sse({**self.base(), "choices": [choice]})]
