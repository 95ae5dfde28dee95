"""What the OpenAI-compatible families share when they answer: the fields of every chunk, the usage chunk that
ends a stream, and the route that prepares a request and answers it whole or streamed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from ...decoders import DecodeResult
from ..generation.formatting import alignment, usage_dict
from ..generation.prompts import PromptInput
from ..generation.protocol import SamplingFields
from ..generation.serving import Prepared, Serving
from ..generation.streaming import Writer, respond, sse

GENERATION_ERRORS = (400, 401, 404, 413, 429, 500, 502, 503, 504)
"""The error statuses every generation route documents."""
STREAM = "a server-sent event stream of chunks, ending with `data: [DONE]` (with `stream: true`)"


class ChunkWriter:
    """Frames of one OpenAI stream: chunks of ``object`` type, ending (with ``stream_options.include_usage``) with
    the usage chunk, which carries ``alignment`` too. Families add how an answer's pieces become chunks."""

    object = ""

    def __init__(self, prepared: Prepared, logprobs_k: int | None, include_usage: bool, with_candidates: bool):
        self.prepared = prepared
        self.k = logprobs_k
        self.include_usage = include_usage
        self.with_candidates = with_candidates
        self.tok = prepared.engine.tokenizer

    def base(self) -> dict[str, Any]:
        return {
            "id": self.prepared.request_id,
            "object": self.object,
            "created": self.prepared.created,
            "model": self.prepared.model,
        }

    def final(self, results: list[DecodeResult]) -> list[str]:
        """With ``stream_options.include_usage``: the usage chunk (no choices), carrying ``alignment`` too."""
        if not self.include_usage:
            return []
        extras = alignment(self.prepared, results, self.with_candidates).model_dump(mode="json")
        return [sse({**self.base(), "choices": [], "usage": usage_dict(results), "alignment": extras})]


async def answer(
    request: Request,
    body: SamplingFields,
    prompts: Sequence[PromptInput],
    request_id: str,
    build: Callable[[Prepared, list[DecodeResult]], BaseModel],
    writer: Callable[[Prepared], Writer],
) -> Any:
    """Prepare ``body`` (every check, before any work) and answer it, streamed when it asks to be."""
    serving: Serving = request.app.state.serving
    request.state.decoder = body.decoder_name  # for the request metrics (middleware), until the decoder resolves
    prepared = serving.prepare(body, prompts, request_id)
    request.state.decoder = prepared.decoder.name
    streamed = writer(prepared) if getattr(body, "stream", False) else None
    return await respond(request, serving, prepared, lambda results: build(prepared, results), streamed)
