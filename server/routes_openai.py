"""Routes of the OpenAI-compatible API: ``POST /v1/completions`` and ``POST /v1/chat/completions``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..decoders import DecodeResult
from ..engines.protocol import Engine
from . import metrics
from .errors import BadRequest, Unsupported, sse_error
from .openai_format import ChunkWriter, chat_response, completion_response
from .openai_protocol import ChatCompletionRequest, CompletionRequest
from .protocol import SamplingFields
from .rendering import chat_prompt, text_prompt, token_prompt
from .serving import Prepared, Render, Serving, new_request_id, status_of

router = APIRouter()


def _render_completion(body: CompletionRequest) -> Render:
    def render(engine: Engine):
        return [
            text_prompt(engine, p) if isinstance(p, str) else token_prompt(engine, p) for p in body.prompts()
        ]

    return render


def _render_chat(body: ChatCompletionRequest) -> Render:
    return lambda engine: [chat_prompt(engine, body.messages, add_generation_prompt=body.add_generation_prompt)]


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request):
    """OpenAI completions, answered by the decoder named in ``decoder`` (default ``sample``)."""
    if body.suffix is not None:
        raise BadRequest("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise BadRequest(
            "best_of is not supported; use decoder={'name': 'best_of_n', 'num_candidates': N} with a reward",
            param="best_of",
        )
    if body.echo and body.logprobs is not None:
        raise BadRequest("echo with logprobs is not supported", param="echo")
    return await _respond(
        request,
        body,
        _render_completion(body),
        "completions",
        new_request_id("cmpl"),
        lambda p, r: completion_response(p, r, body.logprobs, body.echo, body.return_candidates),
        chat=False,
    )


@router.post("/v1/chat/completions")
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
    build: Callable[[Prepared, list[DecodeResult]], dict[str, Any]],
    *,
    chat: bool,
):
    serving: Serving = request.app.state.serving
    start = time.perf_counter()
    decoder_label = body.decoder_name
    error: BaseException | None = None
    try:
        prepared = serving.prepare(body, render, request_id)
        decoder_label = prepared.decoder.name
        if getattr(body, "stream", False):
            return await _stream(request, serving, prepared, body, route, start, chat)
        async with serving.runtime.admit():
            results = await serving.run(prepared, request)
        return JSONResponse(build(prepared, results))
    except BaseException as exc:
        error = exc
        raise
    finally:
        if not getattr(body, "stream", False) or error is not None:
            metrics.REQUESTS.labels(route, decoder_label, str(status_of(error))).inc()
            metrics.LATENCY.labels(route, decoder_label).observe(time.perf_counter() - start)


async def _stream(
    request: Request, serving: Serving, prepared: Prepared, body: SamplingFields, route: str, start: float, chat: bool
) -> StreamingResponse:
    stack = AsyncExitStack()
    # Admission and the first event happen before the response starts, so overload and early errors are plain
    # HTTP errors, never an error frame after a 200.
    await stack.enter_async_context(serving.runtime.admit())
    events = serving.stream(prepared)
    stack.push_async_callback(events.aclose)
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await stack.aclose()
        raise
    logprobs_k = body.requested_logprobs()
    writer = ChunkWriter(prepared, chat, logprobs_k)
    options = getattr(body, "stream_options", None)
    include_usage = bool(options and options.include_usage)

    async def frames() -> AsyncIterator[str]:
        results: list[DecodeResult] = []
        status = "200"
        try:
            pending = [first] if first is not None else []
            async for event in _chain(pending, events):
                prompt_index, item = event
                if isinstance(item, DecodeResult):
                    results.append(item)
                    continue
                for frame in writer.delta(prompt_index, item):
                    yield frame
            if include_usage:
                yield writer.usage(results, body.return_candidates)
        except Exception as exc:  # mid-stream: an error event, then [DONE]
            status = str(status_of(exc))
            yield sse_error(exc)
        except BaseException:
            status = "499"
            raise
        finally:
            await stack.aclose()
            metrics.REQUESTS.labels(route, prepared.decoder.name, status).inc()
            metrics.LATENCY.labels(route, prepared.decoder.name).observe(time.perf_counter() - start)
        yield "data: [DONE]\n\n"

    return StreamingResponse(frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _chain(first: list, rest: AsyncIterator) -> AsyncIterator:
    for item in first:
        yield item
    async for item in rest:
        yield item
