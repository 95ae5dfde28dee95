"""Route of the native API, ``POST /v1/align``: a prompt or conversation (or several under one budget), answered
with every candidate."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..errors import documented
from ..generation.prompts import Chat, Text
from ..generation.serving import Serving, new_request_id
from ..generation.streaming import respond
from .protocol import AlignRequest, AlignResponse
from .serving import AlignWriter, align_response

router = APIRouter()


@router.post(
    "/v1/align",
    response_model=AlignResponse,
    responses=documented(
        400, 401, 404, 413, 429, 500, 502, 503, 504, stream="alignment.chunk events, then the whole response"
    ),
)
async def align(body: AlignRequest, request: Request) -> Any:
    """Decode a prompt (or several under one budget) with the requested decoder and rewards (``stream`` to
    receive it as it is decided)."""
    serving: Serving = request.app.state.serving
    request.state.decoder = body.decoder_name  # for the request metrics (middleware)
    if body.prompts is not None:
        prompts = [Text(p) if isinstance(p, str) else Chat(p) for p in body.prompts]
    else:
        prompts = [Chat(body.messages) if body.messages is not None else Text(body.prompt or "")]
    prepared = serving.prepare(body, prompts, new_request_id("align"))
    request.state.decoder = prepared.decoder.name
    writer = AlignWriter(prepared, body.return_candidates) if body.stream else None
    return await respond(
        request, serving, prepared, lambda results: align_response(prepared, results, body.return_candidates), writer
    )
