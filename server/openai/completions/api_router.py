"""Route of ``POST /v1/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...errors import documented
from ...generation.prompts import Text, Tokens
from ...generation.serving import new_request_id
from ..serving import GENERATION_ERRORS, STREAM, answer
from .protocol import CompletionRequest, CompletionResponse
from .serving import CompletionChunks, completion_response

router = APIRouter()


@router.post(
    "/v1/completions", response_model=CompletionResponse, responses=documented(*GENERATION_ERRORS, stream=STREAM)
)
async def create_completion(body: CompletionRequest, request: Request):
    """OpenAI completions, answered by the decoder named in ``decoder`` (default ``sample``)."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await answer(
        request,
        body,
        [Text(p) if isinstance(p, str) else Tokens(p) for p in body.prompts()],
        new_request_id("cmpl"),
        lambda prepared, results: completion_response(prepared, results, body.logprobs, body.return_candidates),
        lambda prepared: CompletionChunks(prepared, body.logprobs, include_usage, body.return_candidates),
    )
