"""One exception hierarchy and one mapper to HTTP, with OpenAI's error shape, and the error statuses each route
documents.

Every error body is ``{"error": {"message", "type", "param", "code"}}``. Validation is 400 (FastAPI's 422 handler
is replaced by a bounded 400), unknown names 404, unsupported 501, overload 429/503, deadline 504, a remote
scorer 502, anything else 500 with a sanitized message: no traceback or path ever reaches a client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..decoders import DecoderError
from ..engines.protocol import EngineRequestError, EngineUnavailable, EngineUpstreamError
from ..rewards.protocol import RewardConfigError, RewardError

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 400


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    """The request field at fault, dotted for nested ones (``decoder.num_candidates``)."""
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape (streams send it as one ``data:`` event before ``[DONE]``)."""

    error: ErrorBody


class AlignError(Exception):
    """Base of errors the server answers deliberately."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


class BadRequest(AlignError):
    status, type = 400, "invalid_request_error"


class Unauthorized(AlignError):
    status, type = 401, "authentication_error"


class NotFound(AlignError):
    status, type = 404, "not_found_error"


class Unsupported(AlignError):
    status, type = 501, "not_implemented_error"


class Overloaded(AlignError):
    status, type = 429, "rate_limit_error"


class Unavailable(AlignError):
    status, type = 503, "service_unavailable_error"


class DeadlineExceeded(AlignError):
    status, type = 504, "timeout_error"


class UpstreamError(AlignError):
    status, type = 502, "upstream_error"


class ClientDisconnected(AlignError):
    """The client went away before its answer was ready; nothing is sent (499 in metrics, INFO in the log)."""

    status, type = 499, "client_disconnected"

    def __init__(self, request_id: str):
        super().__init__(f"{request_id}: the client disconnected; its work was aborted", code="client_disconnected")
        self.request_id = request_id


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": _clip(message), "type": type_, "param": param, "code": code}}


def to_align_error(exc: BaseException) -> AlignError:
    """Map any exception to the :class:`AlignError` the client sees (no logging: that is the caller's)."""
    if isinstance(exc, AlignError):
        return exc
    if isinstance(exc, (EngineRequestError, DecoderError)):
        return BadRequest(str(exc), param=exc.param)
    if isinstance(exc, RewardConfigError):
        return BadRequest(str(exc), param="reward")
    if isinstance(exc, RewardError):
        cls = UpstreamError if exc.upstream else AlignError
        err = cls(f"{exc} (the reward could not score the candidates)", param="reward", code="reward_failed")
        err.type = "upstream_error" if exc.upstream else "reward_error"
        return err
    if isinstance(exc, EngineUnavailable):
        return Unavailable(str(exc), code="engine_unavailable", headers={"Retry-After": "5"})
    if isinstance(exc, EngineUpstreamError):
        return UpstreamError(str(exc), code="engine_failed")
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded("the request exceeded its deadline", code="deadline_exceeded")
    return InternalError("internal error; see the server log", code="internal_error")


class InternalError(AlignError):
    """An exception nobody mapped: a bug. The client gets a sanitized 500; the log gets the traceback, once."""


def error_response(exc: BaseException) -> JSONResponse:
    """The HTTP response for ``exc``; an unmapped exception is logged here with its traceback."""
    err = to_align_error(exc)
    if isinstance(err, InternalError):
        log.error("internal error: %s", type(exc).__name__, exc_info=exc)
    return JSONResponse(
        error_body(err.message, err.type, err.param, err.code), status_code=err.status, headers=err.headers
    )


def _validation_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    # Pydantic's union branches add names like "function-after[...]" or "str": keep only field names.
    parts = [p for p in parts if "[" not in p and p not in ("str", "int", "float", "list", "dict")]
    return ".".join(parts) or None


def validation_error_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    param = _validation_param(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return f"{param}: {msg}{more}" if param else f"{msg}{more}", param


def install_handlers(app: FastAPI) -> None:
    """Route every error through :func:`error_response`."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_error_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}.get(
            exc.status_code, "invalid_request_error" if exc.status_code < 500 else "internal_error"
        )
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code)

    async def _mapped(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def _gone(request: Request, exc: Exception) -> Response:
        log.info("%s", exc)  # normal operation: the client left; its engine work was aborted
        return Response(status_code=ClientDisconnected.status)

    app.add_exception_handler(ClientDisconnected, _gone)
    # Known classes are answered by the router's exception middleware. No handler is registered for the
    # catch-all ``Exception``: Starlette would run it in its outermost middleware, which answers and then
    # re-raises, so the server closes the client's connection. Unmapped exceptions reach
    # :class:`~alignd.server.middleware.RequestBoundary`.
    for cls in (
        AlignError,
        DecoderError,
        EngineRequestError,
        EngineUnavailable,
        EngineUpstreamError,
        RewardConfigError,
        RewardError,
        TimeoutError,
    ):
        app.add_exception_handler(cls, _mapped)


def sse_error(exc: BaseException) -> str:
    """An error as a server-sent event (sent mid-stream, followed by ``data: [DONE]``)."""
    err = to_align_error(exc)
    if isinstance(err, InternalError):
        log.error("internal error mid-stream: %s", type(exc).__name__, exc_info=exc)
    return f"data: {json.dumps(error_body(err.message, err.type, err.param, err.code))}\n\n"


_ERRORS = {
    400: "Invalid request: malformed JSON, a value out of bounds or over a server limit (`param` names the field)",
    401: "Missing or wrong API key (when the server has `api_keys`)",
    404: "Unknown model, decoder or reward (`param` names the field)",
    413: "Request body over the server's `limits.max_body_bytes`",
    429: "The server is serving its maximum of concurrent requests; retry after `Retry-After` seconds",
    500: "A reward failed under `on_error: fail`, or an internal error (sanitized message)",
    501: "A feature that has no meaning here (image or audio content)",
    502: "A remote scorer or remote engine server failed",
    503: "The server is loading, draining, or an engine died (`Retry-After`)",
    504: "The request passed `limits.request_timeout_s`; its engine work was aborted",
}


def documented(*statuses: int, stream: str | None = None) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for the error statuses a route can answer (all in OpenAI's error shape), and the
    event-stream form of its 200 when it streams."""
    out: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse, "description": _ERRORS[s]} for s in statuses}
    if stream is not None:
        event = {
            "type": "object",
            "properties": {"data": {"type": "string", "description": stream}, "event": {"type": "string"}},
            "required": ["data"],
        }
        out[200] = {"content": {"text/event-stream": {"schema": event}}}
    return out
