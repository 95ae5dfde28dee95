"""Building OpenAI response objects (completions and chat, whole and streamed) from decode results.

Completion log-probs follow vLLM's server: each token's row holds its own log-prob and the top ``logprobs``
alternatives (up to ``logprobs + 1`` entries, as OpenAI documents), ``-inf`` is sent as -9999, and with ``echo``
the prompt's tokens come first, the first of them without a log-prob (nothing precedes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..decoders import Candidate, DecodeResult
from ..engines.protocol import StreamDelta, Tokenizer
from .openai_protocol import ChatCompletionResponse, CompletionResponse
from .serving import Prepared, PromptEcho, alignment, usage_dict
from .streaming import sse

_FLOOR = -9999.0  # OpenAI's stand-in for -inf, which JSON cannot carry


def _top(row: dict[int, float] | None, k: int) -> list[tuple[int, float]]:
    if not row or k <= 0:
        return []
    # vLLM adds the sampled token to the top-k row; keep the true top k.
    return sorted(row.items(), key=lambda kv: -kv[1])[:k]


def completion_logprobs(
    tok: Tokenizer,
    token_ids: Sequence[int],
    logprobs: Sequence[float | None] | None,
    rows: Sequence[dict[int, float] | None] | None,
    offset: int = 0,
) -> dict[str, Any] | None:
    """The legacy completions ``logprobs`` object: tokens, token_logprobs, top_logprobs, text_offset.

    ``rows`` are the engine's per-position rows (the token's own log-prob plus the requested top alternatives),
    reported whole; a ``None`` log-prob (the first prompt token) has no row either.
    """
    if logprobs is None:
        return None
    tokens = [tok.token_to_str(t) for t in token_ids]
    text_offset = []
    for piece in tokens:
        text_offset.append(offset)
        offset += len(piece)
    rows = rows or [None] * len(tokens)
    return {
        "tokens": tokens,
        "token_logprobs": [None if lp is None else max(lp, _FLOOR) for lp in logprobs],
        "top_logprobs": [
            None if lp is None or row is None else {tok.token_to_str(t): max(v, _FLOOR) for t, v in row.items()}
            for lp, row in zip(logprobs, rows)
        ],
        "text_offset": text_offset,
    }


def prompt_rows(
    token_ids: Sequence[int], rows: Sequence[dict[int, float] | None]
) -> tuple[list[float | None], list[dict[int, float] | None]]:
    """Each prompt token's own log-prob (``None`` for the first) and its row, from prompt log-prob rows."""
    own = [None if row is None or t not in row else row[t] for t, row in zip(token_ids, rows)]
    return own, [None if lp is None else row for lp, row in zip(own, rows)]


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
        return {"token": text, "logprob": max(lp, _FLOOR), "bytes": list(text.encode("utf-8"))}

    rows = top or [{}] * len(token_ids)
    return {
        "content": [
            {**entry(t, lp), "top_logprobs": [entry(tid, v) for tid, v in _top(row, k)]}
            for t, lp, row in zip(token_ids, logprobs, rows)
        ]
    }


def _choices(prepared: Prepared, results: Sequence[DecodeResult]) -> list[tuple[int, int, Candidate]]:
    """``(choice index, prompt index, candidate)`` of every returned answer."""
    n = prepared.n
    return [(p * n + j, p, c) for p, r in enumerate(results) for j, c in enumerate(r.choices)]


def _echoed(prepared: Prepared, p: int) -> str:
    ids, shown = prepared.prompts[p]
    return shown if isinstance(shown, str) else prepared.engine.tokenizer.decode(ids)


def completion_response(
    prepared: Prepared, results: Sequence[DecodeResult], logprobs_k: int | None, with_candidates: bool
) -> CompletionResponse:
    tok = prepared.engine.tokenizer
    echo = prepared.plan.echo
    choices = []
    for index, p, c in _choices(prepared, results):
        text, logprobs = c.text, None
        if logprobs_k is not None:
            ids, own, rows = list(c.token_ids), list(c.logprobs or []), list(c.top_logprobs or [])
            if echo:
                prompt_ids = prepared.prompts[p][0]
                p_own, p_rows = prompt_rows(prompt_ids, results[p].prompt_logprobs or [None] * len(prompt_ids))
                ids, own, rows = prompt_ids + ids, p_own + own, p_rows + rows
            logprobs = completion_logprobs(tok, ids, own, rows)
        if echo:
            text = _echoed(prepared, p) + text
        choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason})
    return CompletionResponse(
        id=prepared.request_id,
        created=prepared.created,
        model=prepared.model,
        choices=choices,
        usage=usage_dict(results),
        alignment=alignment(prepared, results, with_candidates),
    )


def chat_response(
    prepared: Prepared, results: Sequence[DecodeResult], logprobs_k: int | None, with_candidates: bool
) -> ChatCompletionResponse:
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
        for index, _, c in _choices(prepared, results)
    ]
    return ChatCompletionResponse(
        id=prepared.request_id,
        created=prepared.created,
        model=prepared.model,
        choices=choices,
        usage=usage_dict(results),
        alignment=alignment(prepared, results, with_candidates),
    )


class ChunkWriter:
    """Formats stream events as completion or chat chunks for one request."""

    def __init__(
        self,
        prepared: Prepared,
        chat: bool,
        logprobs_k: int | None,
        include_usage: bool = False,
        with_candidates: bool = False,
    ):
        self.prepared = prepared
        self.chat = chat
        self.k = logprobs_k
        self.include_usage = include_usage
        self.with_candidates = with_candidates
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

    def echo(self, prompt_index: int, e: PromptEcho) -> list[str]:
        """The prompt, once per answer of it, before its first token (``echo`` on /v1/completions)."""
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
            out.append(sse({**self._base(), "choices": [choice]}))
        return out

    def delta(self, prompt_index: int, d: StreamDelta) -> list[str]:
        index = prompt_index * self.prepared.n + d.index
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
            logprobs = None
            if self.k is not None:
                logprobs = completion_logprobs(self.tok, d.token_ids, d.logprobs, d.top_logprobs, offset)
                self.offsets[index] = offset + sum(len(t) for t in logprobs["tokens"]) if logprobs else offset
            choice = {"index": index, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish_reason}
        out.append(sse({**self._base(), "choices": [choice]}))
        return out

    def final(self, results: list[DecodeResult]) -> list[str]:
        """With ``stream_options.include_usage``: the usage chunk (no choices), carrying ``alignment`` too."""
        if not self.include_usage:
            return []
        extras = alignment(self.prepared, results, self.with_candidates).model_dump(mode="json")
        return [sse({**self._base(), "choices": [], "usage": usage_dict(results), "alignment": extras})]
