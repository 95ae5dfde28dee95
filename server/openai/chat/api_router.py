"""Route of ``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...errors import documented
from ...generation.prompts import Chat
from ...generation.serving import new_request_id
from ..serving import GENERATION_ERRORS, STREAM, answer
from .protocol import ChatCompletionRequest, ChatCompletionResponse
from .serving import ChatChunks, chat_response

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=documented(*GENERATION_ERRORS, 501, stream=STREAM),
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    """OpenAI chat completions, answered by the decoder named in ``decoder`` (default ``sample``)."""
    k = body.requested_logprobs()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await answer(
        request,
        body,
        [Chat(body.messages, body.add_generation_prompt, tools=body.template_tools())],
        new_request_id("chatcmpl"),
        lambda prepared, results: chat_response(prepared, results, k, body.return_candidates),
        lambda prepared: ChatChunks(prepared, k, include_usage, body.return_candidates),
    )
