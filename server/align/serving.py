"""Answering ``POST /v1/align``: the chosen answers with every candidate, usage and timings; streamed as
``alignment.chunk`` events as the answer is decided, then the whole response."""

from __future__ import annotations

from ...decoders import DecodeResult
from ...engines.protocol import StreamDelta
from ..generation.formatting import alignment, usage_dict
from ..generation.serving import Prepared, PromptEcho
from ..generation.streaming import sse
from .protocol import AlignChoice, AlignChunk, AlignResponse


def align_response(prepared: Prepared, results: list[DecodeResult], with_candidates: bool) -> AlignResponse:
    """The native answer: the chosen answers with their rewards, every candidate, usage and timings (each
    prompt's, in order, when the request had several)."""
    extras = alignment(prepared, results, with_candidates)
    chosen = [c for result in results for c in result.choices]
    return AlignResponse(
        id=prepared.request_id,
        created=prepared.created,
        model=prepared.model,
        decoder=extras.decoder,
        decoder_params=extras.decoder_params,
        reward=extras.reward,
        choices=[
            AlignChoice(text=c.text, finish_reason=c.finish_reason, **choice.model_dump())
            for c, choice in zip(chosen, extras.choices)
        ],
        candidates=extras.candidates,
        usage={**usage_dict(results), **extras.usage.model_dump()},
        timings=extras.timings,
        info=results[0].info if len(results) == 1 else [r.info for r in results],
    )


class AlignWriter:
    """Frames of a streamed ``/v1/align``: a chunk per committed piece, then the whole response."""

    def __init__(self, prepared: Prepared, with_candidates: bool):
        self.prepared = prepared
        self.with_candidates = with_candidates

    def echo(self, prompt_index: int, e: PromptEcho) -> list[str]:
        return []  # the native API does not echo prompts

    def delta(self, prompt_index: int, d: StreamDelta) -> list[str]:
        if not d.text and not d.token_ids and d.finish_reason is None:
            return []
        chunk = AlignChunk(
            id=self.prepared.request_id,
            index=prompt_index * self.prepared.n + d.index,
            text=d.text,
            token_ids=d.token_ids,
            finish_reason=d.finish_reason,
        )
        return [sse(chunk.model_dump(mode="json"))]

    def final(self, results: list[DecodeResult]) -> list[str]:
        return [sse(align_response(self.prepared, results, self.with_candidates).model_dump(mode="json"))]
