"""Route of ``POST /v1/responses``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...errors import documented
from ...generation.prompts import Chat
from ...generation.serving import new_request_id
from ..serving import GENERATION_ERRORS, answer
from .protocol import Response, ResponsesRequest
from .serving import ResponseEvents, response_of

router = APIRouter()

EVENTS = "Responses events from `response.created` to `response.completed`, as server-sent events (`stream: true`)"


@router.post("/v1/responses", response_model=Response, responses=documented(*GENERATION_ERRORS, 501, stream=EVENTS))
async def create_response(body: ResponsesRequest, request: Request):
    """OpenAI's Responses API, answered by the decoder named in ``decoder`` (default ``sample``)."""
    return await answer(
        request,
        body,
        [Chat(body.messages(), tools=body.template_tools(), param="input")],
        new_request_id("resp"),
        lambda prepared, results: response_of(prepared, body, results),
        lambda prepared: ResponseEvents(prepared, body),
    )
