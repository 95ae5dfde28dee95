"""Building what every response carries, in one place: OpenAI's ``usage``, alignd's ``alignment`` object, the
choices of a request with several prompts, and log-prob tables in the shapes OpenAI's two APIs use.

Completion log-probs follow vLLM's server: each token's row holds its own log-prob and the top ``logprobs``
alternatives (up to ``logprobs + 1`` entries, as OpenAI documents), ``-inf`` is sent as -9999, and with ``echo``
the prompt's tokens come first, the first of them without a log-prob (nothing precedes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...decoders import Candidate, DecodeResult, Usage
from ...engines.metering import DECODER
from ...engines.protocol import Tokenizer
from ...structured import Parsed
from .protocol import Alignment, AlignmentChoice, CandidateOut
from .serving import Prepared

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


def choices(prepared: Prepared, results: Sequence[DecodeResult]) -> list[tuple[int, int, Candidate]]:
    """``(choice index, prompt index, candidate)`` of every returned answer."""
    n = prepared.n
    return [(p * n + j, p, c) for p, r in enumerate(results) for j, c in enumerate(r.choices)]


def parsed(prepared: Prepared, c: Candidate) -> Parsed:
    """A returned answer read in the request's shape (content and tool calls); its problem, if any, is recorded
    on the candidate, so ``alignment`` reports it even where no reward checked it."""
    fmt = prepared.plan.answer_format
    if fmt is None:
        return Parsed(c.text)
    out = fmt.parse(c.text)
    if c.invalid is None and c.finish_reason is not None:
        c.invalid = out.problem
    return out


def echoed(prepared: Prepared, p: int) -> str:
    """Prompt ``p`` as ``echo`` returns it: the text the user gave, or its token ids decoded."""
    ids, shown = prepared.prompts[p]
    return shown if isinstance(shown, str) else prepared.engine.tokenizer.decode(ids)


def usage_dict(results: Sequence[DecodeResult]) -> dict[str, Any]:
    """OpenAI's ``usage``: tokens of the prompts and of the returned answers (engine totals are in alignment)."""
    # The prompt the model saw: a decoder may render its own (URIAL's prefix), so take it from the results.
    prompt = sum(r.usage.prompt_tokens for r in results)
    completion = sum(r.usage.completion_tokens for r in results)
    cached = sum(
        r.usage.engine.by_source[DECODER].cached_tokens for r in results if DECODER in r.usage.engine.by_source
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def alignment(prepared: Prepared, results: Sequence[DecodeResult], with_candidates: bool) -> Alignment:
    """The ``alignment`` object of OpenAI responses (and the extras of ``/v1/align``)."""
    n = prepared.n
    usage = Usage()
    timings: dict[str, float] = {}
    for result in results:
        usage.merge(result.usage)
        for key, value in result.timings.items():
            timings[key] = max(timings.get(key, 0.0), value) if key == "total" else timings.get(key, 0.0) + value
    info = [r.info for r in results if r.info]
    candidates: Any = None
    if with_candidates:
        candidates = [[CandidateOut.of(c) for c in r.candidates] for r in results]
        if len(results) == 1:
            candidates = candidates[0]
    return Alignment(
        decoder=prepared.decoder.name,
        decoder_params=prepared.decoder.params.model_dump(mode="json"),
        reward=prepared.reward_names,
        choices=[AlignmentChoice.of(p * n + j, c) for p, r in enumerate(results) for j, c in enumerate(r.choices)],
        usage=usage.as_dict(),
        timings=timings,
        info=(info if len(info) > 1 else info[0]) if info else None,
        candidates=candidates,
    )


def envelope(prepared: Prepared, results: Sequence[DecodeResult], with_candidates: bool) -> dict[str, Any]:
    """What every OpenAI response object carries besides its choices: its id, time, model, usage and alignment."""
    return {
        "id": prepared.request_id,
        "created": prepared.created,
        "model": prepared.model,
        "usage": usage_dict(results),
        "alignment": alignment(prepared, results, with_candidates),
    }
