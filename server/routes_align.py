"""The native API: ``POST /v1/align`` answers with the chosen text, every candidate, usage and timings."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..engines.protocol import Engine
from .align_protocol import AlignChoice, AlignRequest, AlignResponse
from .rendering import chat_prompt, text_prompt
from .responses import documented
from .serving import Serving, alignment, new_request_id, usage_dict

router = APIRouter()


def _render(body: AlignRequest):
    def render(engine: Engine):
        if body.messages is not None:
            return [chat_prompt(engine, body.messages)]
        return [text_prompt(engine, body.prompt or "")]

    return render


@router.post(
    "/v1/align", response_model=AlignResponse, responses=documented(400, 401, 404, 413, 429, 500, 502, 503, 504)
)
async def align(body: AlignRequest, request: Request) -> AlignResponse:
    """Decode one prompt with the requested decoder and rewards."""
    serving: Serving = request.app.state.serving
    request.state.decoder = body.decoder_name  # for the request metrics (middleware)
    prepared = serving.prepare(body, _render(body), new_request_id("align"))
    request.state.decoder = prepared.decoder.name
    async with serving.runtime.admit():
        [result] = await serving.run(prepared, request)
    extras = alignment(prepared, [result], body.return_candidates)
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
