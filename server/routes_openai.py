"""Routes of the OpenAI-compatible API: ``POST /v1/completions`` and ``POST /v1/chat/completions``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from ..decoders import DecodeResult
from ..engines.protocol import Engine
from .errors import BadRequest, Unsupported
from .openai_format import ChunkWriter, chat_response, completion_response
from .openai_protocol import ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse
from .protocol import SamplingFields
from .rendering import chat_prompt, text_prompt, token_prompt
from .responses import documented
from .serving import Prepared, Render, Serving, new_request_id
from .streaming import stream_response

log = logging.getLogger(__name__)
router = APIRouter()

_GENERATION_ERRORS = (400, 401, 404, 413, 429, 500, 502, 503, 504)
_STREAM = "a server-sent event stream of chunks, ending with `data: [DONE]` (with `stream: true`)"


def _render_completion(body: CompletionRequest) -> Render:
    def render(engine: Engine):
        return [text_prompt(engine, p) if isinstance(p, str) else token_prompt(engine, p) for p in body.prompts()]

    return render


def _render_chat(body: ChatCompletionRequest) -> Render:
    return lambda engine: [chat_prompt(engine, body.messages, add_generation_prompt=body.add_generation_prompt)]


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses=documented(*_GENERATION_ERRORS, stream=_STREAM),
)
async def create_completion(body: CompletionRequest, request: Request):
    """OpenAI completions, answered by the decoder named in ``decoder`` (default ``sample``)."""
    if body.suffix is not None:
        raise BadRequest("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise BadRequest(
            "best_of is not supported; use decoder={'name': 'best_of_n', 'num_candidates': N} with a reward",
            param="best_of",
        )
    return await _respond(
        request,
        body,
        _render_completion(body),
        "completions",
        new_request_id("cmpl"),
        lambda p, r: completion_response(p, r, body.logprobs, body.return_candidates),
        chat=False,
    )


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=documented(*_GENERATION_ERRORS, 501, stream=_STREAM),
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    """OpenAI chat completions, answered by the decoder named in ``decoder`` (default ``sample``)."""
    if body.tools:
        raise Unsupported("tools are not supported by alignd", param="tools")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise Unsupported("only response_format type 'text' is supported", param="response_format")
    if body.chat_template is not None:
        raise BadRequest(
            "a request may not supply a chat template; the model's own template is used", param="chat_template"
        )
    logprobs_k = body.requested_logprobs()
    return await _respond(
        request,
        body,
        _render_chat(body),
        "chat",
        new_request_id("chatcmpl"),
        lambda p, r: chat_response(p, r, logprobs_k, body.return_candidates),
        chat=True,
    )


async def _respond(
    request: Request,
    body: SamplingFields,
    render: Render,
    route: str,
    request_id: str,
    build: Callable[[Prepared, list[DecodeResult]], BaseModel],
    *,
    chat: bool,
) -> Any:
    serving: Serving = request.app.state.serving
    request.state.decoder = body.decoder_name  # for the request metrics (middleware)
    prepared = serving.prepare(body, render, request_id)
    request.state.decoder = prepared.decoder.name
    if getattr(body, "stream", False):
        options = getattr(body, "stream_options", None)
        writer = ChunkWriter(
            prepared, chat, body.requested_logprobs(), bool(options and options.include_usage), body.return_candidates
        )
        return await stream_response(request, serving, prepared, writer)
    async with serving.runtime.admit():
        results = await serving.run(prepared, request)
    return build(prepared, results)
