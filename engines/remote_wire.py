"""The wire format between alignd and a vLLM OpenAI-compatible server: ``/v1/completions`` request bodies built
from a :class:`~alignd.engines.protocol.SamplingConfig`, and responses read back into the engine protocol's
:class:`~alignd.engines.protocol.Generation` and errors.

>>> completion_body("m", [1, 2], SamplingConfig(max_tokens=3, logprobs=2), "req-0")["logprobs"]
2
>>> parse_logprobs({"token_logprobs": [-0.1], "top_logprobs": [{"token_id:7": -0.1}]}, SamplingConfig(logprobs=1))
([-0.1], [{7: -0.1}])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import httpx

from .grammar import EXTRA_ARG, extra_arg
from .protocol import (
    Completion,
    EngineRequestError,
    EngineUnavailable,
    EngineUpstreamError,
    Generation,
    SamplingConfig,
    StreamDelta,
    finish_reason,
)


def completion_body(
    model: str,
    prompt: Sequence[int],
    params: SamplingConfig,
    request_id: str,
    *,
    json_whitespace: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """The ``/v1/completions`` body asking a vLLM server for what :meth:`Engine.generate` returns."""
    # Every sampling field is sent explicitly: a field left out would take the server's generation-config
    # default, and the remote answer would differ from the in-process one.
    body: dict[str, Any] = {
        "model": model,
        "prompt": list(prompt),
        "n": params.n,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "seed": params.seed,
        "stop": list(params.stop),
        "stop_token_ids": list(params.stop_token_ids),
        "include_stop_str_in_output": params.include_stop_str_in_output,
        "ignore_eos": params.ignore_eos,
        "min_tokens": params.min_tokens,
        "repetition_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "logit_bias": {str(t): b for t, b in params.logit_bias} or None,
        "skip_special_tokens": params.skip_special_tokens,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        "request_id": request_id,
    }
    if params.logprob_token_ids:
        body["logprob_token_ids"] = list(params.logprob_token_ids)
        body["logprobs"] = len(params.logprob_token_ids)
    elif params.logprobs is not None:
        body["logprobs"] = params.logprobs
    if params.prompt_logprobs is not None:
        body["prompt_logprobs"] = params.prompt_logprobs
    if params.constraint is not None and params.constraint_start is not None:
        # continued from a committed prefix by alignd's processor on the server (RemoteOptions.prefix_grammar)
        body["vllm_xargs"] = {EXTRA_ARG: extra_arg(params.constraint, params.constraint_start, json_whitespace)}
    elif params.constraint is not None:
        body["structured_outputs"] = params.constraint.vllm_fields()
    body.update(extra)
    return body


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def _token_id(key: str) -> int:
    return int(key.removeprefix("token_id:"))


def parse_logprobs(
    logprobs: dict[str, Any] | None, params: SamplingConfig
) -> tuple[list[float] | None, list[dict[int, float]] | None]:
    if logprobs is None or (params.logprobs is None and not params.logprob_token_ids):
        return None, None
    chosen = [-math.inf if v is None else float(v) for v in logprobs.get("token_logprobs") or []]
    top = [{_token_id(k): float(v) for k, v in (row or {}).items()} for row in logprobs.get("top_logprobs") or []]
    return chosen, top


def to_generation(out: dict[str, Any] | None, prompt: Sequence[int], params: SamplingConfig) -> Generation:
    if out is None:  # aborted
        aborted = [Completion(index=i, text="", token_ids=[], finish_reason="abort") for i in range(params.n)]
        return Generation(prompt_token_ids=list(prompt), completions=aborted)
    completions = []
    for choice in sorted(out["choices"], key=lambda c: c["index"]):
        chosen, top = parse_logprobs(choice.get("logprobs"), params)
        completions.append(
            Completion(
                index=choice["index"],
                text=choice.get("text") or "",
                token_ids=list(choice.get("token_ids") or []),
                finish_reason=finish_reason(choice.get("finish_reason")),
                logprobs=chosen,
                top_logprobs=top,
                cumulative_logprob=sum(chosen) if chosen is not None else None,
                stop_reason=choice.get("stop_reason"),
            )
        )
    cached = cached_tokens(out.get("usage")) or 0
    first = out["choices"][0] if out.get("choices") else {}
    prompt_rows = None
    if params.prompt_logprobs is not None:  # {"<token id>": {"logprob": ..., "rank": ..., "decoded_token": ...}}
        raw = first.get("prompt_logprobs") or []
        prompt_rows = [{int(t): float(lp["logprob"]) for t, lp in row.items()} if row else None for row in raw]
    return Generation(
        prompt_token_ids=list(first.get("prompt_token_ids") or prompt),
        completions=completions,
        num_cached_tokens=int(cached),
        prompt_logprobs=prompt_rows,
    )


def stream_deltas(chunk: dict[str, Any], params: SamplingConfig, index_offset: int = 0) -> list[StreamDelta]:
    """The deltas of one server-sent chunk of a streamed completion; answer ``i`` is ``index_offset + i``.
    An error chunk (vLLM sends ``{"error": ...}`` when a stream fails midway) raises it."""
    if "error" in chunk:
        raise error_from(chunk["error"], 500)
    deltas = []
    for choice in chunk.get("choices") or []:
        chosen, top = parse_logprobs(choice.get("logprobs"), params)
        deltas.append(
            StreamDelta(
                index=index_offset + choice["index"],
                text=choice.get("text") or "",
                token_ids=list(choice.get("token_ids") or []),
                logprobs=chosen,
                top_logprobs=top,
                finish_reason=finish_reason(choice.get("finish_reason")),
            )
        )
    return deltas


def cached_tokens(usage: dict[str, Any] | None) -> int | None:
    """Prompt tokens served from the server's prefix cache, from a ``usage`` object (None without one; 0 when the
    server was not started with ``--enable-prompt-tokens-details``)."""
    if usage is None:
        return None
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def error_from(error: Any, status: int) -> Exception:
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = str(error.get("message") or "the engine server failed the request")
    if status in (400, 422):
        return EngineRequestError(message, error.get("param"))
    if status in (401, 403, 404):
        return EngineUnavailable(f"the engine server refused the request ({status}): {message}")
    return EngineUpstreamError(f"the engine server failed ({status}): {message}")


def raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        error = {"message": response.text[:500]}
    raise error_from(error, response.status_code)
