"""Serving a request as server-sent events, for every endpoint family: admission and the first event before the
response starts (so overload and early errors are plain HTTP errors, never an error frame after a 200), then
one ``data:`` frame per event, an error event if the work fails midway, and always ``data: [DONE]`` last.

What the frames say is the endpoint's: a :class:`Writer` turns the decode's events into frames (OpenAI chunks
for the OpenAI routes, alignment chunks for ``/v1/align``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Protocol

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ...decoders import DecodeResult
from ...engines.protocol import StreamDelta
from ..errors import sse_error
from .serving import Prepared, PromptEcho, Serving, status_of

log = logging.getLogger(__name__)


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class Writer(Protocol):
    """Frames of one endpoint's stream."""

    def echo(self, prompt_index: int, e: PromptEcho) -> list[str]: ...

    def delta(self, prompt_index: int, d: StreamDelta) -> list[str]: ...

    def final(self, results: list[DecodeResult]) -> list[str]:
        """Frames after every answer ended (a usage chunk, the whole alignment response...)."""
        ...

    # A writer may also define ``error(exc) -> list[str]``, the frames of a failure midway (default: one
    # ``{"error": ...}`` chunk, as OpenAI's chat and completion streams send it).


async def respond(
    request: Request,
    serving: Serving,
    prepared: Prepared,
    build: Callable[[list[DecodeResult]], Any],
    writer: Writer | None = None,
) -> Any:
    """Answer a prepared request: as a stream of ``writer``'s frames when there is a writer, else the response
    ``build`` makes of the results, once the request's slot was admitted and its decodes ran."""
    if writer is not None:
        return await stream_response(request, serving, prepared, writer)
    async with serving.runtime.admit():
        results = await serving.run(prepared, request)
    return build(results)


async def stream_response(request: Request, serving: Serving, prepared: Prepared, writer: Writer) -> StreamingResponse:
    """Run ``prepared`` as a stream of ``writer``'s frames; see the module documentation."""
    stack = AsyncExitStack()
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

    async def frames() -> AsyncIterator[str]:
        results: list[DecodeResult] = []
        status = 200
        try:
            pending = [first] if first is not None else []
            async for prompt_index, item in _chain(pending, events):
                if isinstance(item, DecodeResult):
                    results.append(item)
                    continue
                if isinstance(item, PromptEcho):
                    out = writer.echo(prompt_index, item)
                else:
                    out = writer.delta(prompt_index, item)
                for frame in out:
                    yield frame
            for frame in writer.final(results):
                yield frame
        except Exception as exc:  # mid-stream: an error event, then [DONE]
            status = status_of(exc)
            for frame in writer.error(exc) if hasattr(writer, "error") else [sse_error(exc)]:
                yield frame
        except BaseException:
            status = 499
            log.info("%s: the client disconnected mid-stream; its work was aborted", prepared.request_id)
            raise
        finally:
            request.state.status = status  # how the stream ended, for the request metrics
            # Starlette cancels the response's task group when the client leaves, and a cancelled scope would
            # cancel every await of the clean-up too: the work's abort must run to its end.
            with anyio.CancelScope(shield=True):
                await stack.aclose()
        yield "data: [DONE]\n\n"

    response = _EventStream(frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    response.release = stack.aclose  # a stream never started (the client left at once) holds its work too
    request.state.status = 499  # until its frames say how it ended
    return response


class _EventStream(StreamingResponse):
    """A streaming response that closes its frames when it ends, however it ends.

    When the client leaves, Starlette cancels the response while it may be sending a frame, outside the frames'
    generator, and leaves the generator suspended; it would be closed (its work aborted, its slot freed, its
    status recorded) only when garbage-collected, after the request metrics had counted the stream a success."""

    body_iterator: AsyncGenerator[str, None]
    release: Callable[[], Awaitable[None]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self.release()


async def _chain(first: list, rest: AsyncIterator) -> AsyncIterator:
    for item in first:
        yield item
    async for item in rest:
        yield item
