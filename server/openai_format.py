"""Building OpenAI response objects (completions and chat, whole and streamed) from decode results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..decoders import Candidate, DecodeResult
from ..engines.protocol import StreamDelta, Tokenizer
from .serving import Prepared, alignment_dict, usage_dict


def _top(row: dict[int, float] | None, k: int) -> list[tuple[int, float]]:
    if not row or k <= 0:
        return []
    # vLLM adds the sampled token to the top-k row; keep the true top k.
    return sorted(row.items(), key=lambda kv: -kv[1])[:k]


def completion_logprobs(
    tok: Tokenizer,
    token_ids: Sequence[int],
    logprobs: Sequence[float] | None,
    top: Sequence[dict[int, float]] | None,
    k: int,
    offset: int = 0,
) -> dict[str, Any] | None:
    """The legacy completions ``logprobs`` object: tokens, token_logprobs, top_logprobs, text_offset."""
    if logprobs is None:
        return None
    tokens = [tok.token_to_str(t) for t in token_ids]
    text_offset = []
    for piece in tokens:
        text_offset.append(offset)
        offset += len(piece)
    top_rows = [{tok.token_to_str(t): lp for t, lp in _top(row, k)} for row in (top or [{}] * len(tokens))]
    return {
        "tokens": tokens,
        "token_logprobs": list(logprobs),
        "top_logprobs": top_rows if k > 0 else None,
        "text_offset": text_offset,
    }


def chat_logprobs(
    tok: Tokenizer,
    token_ids: Sequence[int],
    logprobs: Sequence[float] | None,
    top: Sequence[dict[int, float]] | None,
    k: int,
) -> dict[str, Any] | None:
    """The chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    if logprobs is None:
        return None

    def entry(token_id: int, lp: float) -> dict[str, Any]:
        text = tok.token_to_str(token_id)
        return {"token": text, "logprob": max(lp, -9999.0), "bytes": list(text.encode("utf-8"))}

    rows = top or [{}] * len(token_ids)
    return {
        "content": [
            {**entry(t, lp), "top_logprobs": [entry(tid, v) for tid, v in _top(row, k)]}
            for t, lp, row in zip(token_ids, logprobs, rows)
        ]
    }


def _choices(prepared: Prepared, results: Sequence[DecodeResult]) -> list[tuple[int, Candidate]]:
    n = prepared.decodes[0].n
    return [(p * n + j, c) for p, r in enumerate(results) for j, c in enumerate(r.choices)]


def completion_response(
    prepared: Prepared, results: Sequence[DecodeResult], logprobs_k: int | None, echo: bool, with_candidates: bool
) -> dict[str, Any]:
    tok = prepared.engine.tokenizer
    choices = []
    for index, c in _choices(prepared, results):
        prefix = ""
        if echo:
            prefix = tok.decode(prepared.decodes[index // prepared.decodes[0].n].prompt_token_ids)
        choices.append(
            {
                "index": index,
                "text": prefix + c.text,
                "logprobs": completion_logprobs(
                    tok, c.token_ids, c.logprobs, c.top_logprobs, logprobs_k or 0, len(prefix)
                )
                if logprobs_k is not None
                else None,
                "finish_reason": c.finish_reason,
            }
        )
    return {
        "id": prepared.request_id,
        "object": "text_completion",
        "created": prepared.created,
        "model": prepared.model,
        "choices": choices,
        "usage": usage_dict(results, prepared),
        "alignment": alignment_dict(prepared, results, with_candidates),
    }


def chat_response(
    prepared: Prepared, results: Sequence[DecodeResult], logprobs_k: int | None, with_candidates: bool
) -> dict[str, Any]:
    tok = prepared.engine.tokenizer
    choices = [
        {
            "index": index,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": chat_logprobs(tok, c.token_ids, c.logprobs, c.top_logprobs, logprobs_k or 0)
            if logprobs_k is not None
            else None,
            "finish_reason": c.finish_reason,
        }
        for index, c in _choices(prepared, results)
    ]
    return {
        "id": prepared.request_id,
        "object": "chat.completion",
        "created": prepared.created,
        "model": prepared.model,
        "choices": choices,
        "usage": usage_dict(results, prepared),
        "alignment": alignment_dict(prepared, results, with_candidates),
    }


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class ChunkWriter:
    """Formats stream deltas as completion or chat chunks for one request."""

    def __init__(self, prepared: Prepared, chat: bool, logprobs_k: int | None):
        self.prepared = prepared
        self.chat = chat
        self.k = logprobs_k
        self.tok = prepared.engine.tokenizer
        self.started: set[int] = set()
        self.offsets: dict[int, int] = {}

    def _base(self) -> dict[str, Any]:
        return {
            "id": self.prepared.request_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.prepared.created,
            "model": self.prepared.model,
        }

    def delta(self, prompt_index: int, d: StreamDelta) -> list[str]:
        index = prompt_index * self.prepared.decodes[0].n + d.index
        out: list[str] = []
        if not d.text and d.finish_reason is None and self.k is None:
            return out  # a token that ends mid-character: its text arrives with the next one
        if self.chat:
            if index not in self.started:
                self.started.add(index)
                first = {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                out.append(sse({**self._base(), "choices": [first]}))
            logprobs = (
                chat_logprobs(self.tok, d.token_ids, d.logprobs, d.top_logprobs, self.k or 0)
                if self.k is not None
                else None
            )
            choice = {
                "index": index,
                "delta": {"content": d.text} if d.text else {},
                "logprobs": logprobs,
                "finish_reason": d.finish_reason,
            }
        else:
            offset = self.offsets.get(index, 0)
            logprobs = (
                completion_logprobs(self.tok, d.token_ids, d.logprobs, d.top_logprobs, self.k or 0, offset)
                if self.k is not None
                else None
            )
            self.offsets[index] = offset + len(d.text)
            choice = {"index": index, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish_reason}
        out.append(sse({**self._base(), "choices": [choice]}))
        return out

    def usage(self, results: Sequence[DecodeResult], with_candidates: bool) -> str:
        return sse(
            {
                **self._base(),
                "choices": [],
                "usage": usage_dict(results, self.prepared),
                "alignment": alignment_dict(self.prepared, results, with_candidates),
            }
        )
