"""The native API: ``POST /v1/align`` answers with the chosen text, every candidate, usage and timings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..decoders import DecodeResult
from ..engines.protocol import Engine, StreamDelta
from .align_protocol import AlignChoice, AlignChunk, AlignRequest, AlignResponse
from .rendering import chat_prompt, text_prompt
from .responses import documented
from .serving import Prepared, PromptEcho, Serving, alignment, new_request_id, usage_dict
from .streaming import sse, stream_response

router = APIRouter()


def _render(body: AlignRequest):
    def render(engine: Engine):
        if body.messages is not None:
            return [chat_prompt(engine, body.messages)]
        return [text_prompt(engine, body.prompt or "")]

    return render


@router.post(
    "/v1/align",
    response_model=AlignResponse,
    responses=documented(
        400, 401, 404, 413, 429, 500, 502, 503, 504, stream="alignment.chunk events, then the whole response"
    ),
)
async def align(body: AlignRequest, request: Request) -> Any:
    """Decode one prompt with the requested decoder and rewards (``stream`` to receive it as it is decided)."""
    serving: Serving = request.app.state.serving
    request.state.decoder = body.decoder_name  # for the request metrics (middleware)
    prepared = serving.prepare(body, _render(body), new_request_id("align"))
    request.state.decoder = prepared.decoder.name
    if body.stream:
        return await stream_response(request, serving, prepared, AlignWriter(prepared, body.return_candidates))
    async with serving.runtime.admit():
        [result] = await serving.run(prepared, request)
    return align_response(prepared, result, body.return_candidates)


def align_response(prepared: Prepared, result: DecodeResult, with_candidates: bool) -> AlignResponse:
    extras = alignment(prepared, [result], with_candidates)
    return AlignResponse(
        id=prepared.request_id,
        created=prepared.created,
        model=prepared.model,
        decoder=extras.decoder,
        decoder_params=extras.decoder_params,
        reward=extras.reward,
        choices=[
            AlignChoice(text=c.text, finish_reason=c.finish_reason, **choice.model_dump())
            for c, choice in zip(result.choices, extras.choices)
        ],
        candidates=extras.candidates,
        usage={**usage_dict([result]), **extras.usage.model_dump()},
        timings=extras.timings,
        info=result.info,
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
            index=d.index,
            text=d.text,
            token_ids=d.token_ids,
            finish_reason=d.finish_reason,
        )
        return [sse(chunk.model_dump(mode="json"))]

    def final(self, results: list[DecodeResult]) -> list[str]:
        return [sse(align_response(self.prepared, results[0], self.with_candidates).model_dump(mode="json"))]
