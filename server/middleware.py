"""The outermost middleware: bounded bodies, errors that never cost a client its connection, and every request
counted once in ``alignd_requests_total`` with the status it really ended with.

A body whose declared length is over the limit is refused with 413 before it is read. An exception that no
handler answered becomes its OpenAI-shaped response here, so the ASGI server sees a finished request and keeps
the connection open. Counting here, around everything, covers what never reaches a route's code: a body that
fails validation (400), a missing API key (401), an oversized body (413). Routes only say what they know: the
decoder (``request.state.decoder``) and, for a stream, how it ended (``request.state.status``: an error event's
status, or 499 when the client left).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..tracing import enabled as tracing_enabled
from ..tracing import extract, set_attributes, span
from . import metrics
from .errors import error_body, error_response

log = logging.getLogger(__name__)

ROUTES = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/align": "align"}
"""Paths counted in the request metrics, by their route label (reward scoring is ``score``)."""


def route_label(path: str) -> str | None:
    if path in ROUTES:
        return ROUTES[path]
    if path.startswith("/v1/rewards/") and path.endswith("/score"):
        return "score"
    return None


class RequestBoundary:
    """See the module documentation."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        start = time.perf_counter()
        status = 500
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        route = route_label(scope.get("path", ""))
        with self._span(scope, route) as current:
            try:
                length = dict(scope.get("headers") or []).get(b"content-length", b"")
                if length.isdigit() and int(length) > self.max_body_bytes:
                    message = f"request body is over this server's limit of {self.max_body_bytes} bytes"
                    await JSONResponse(error_body(message, "invalid_request_error"), status_code=413)(
                        scope, receive, tracked
                    )
                    return
                try:
                    await self.app(scope, receive, tracked)
                except Exception as exc:
                    if started:  # the response is under way: nothing can be sent but the end of it
                        log.error("error after the response started", exc_info=exc)
                        return
                    await error_response(exc)(scope, receive, tracked)
            finally:
                if route is not None:
                    final = state.get("status", status)
                    decoder = state.get("decoder", "")
                    metrics.REQUESTS.labels(route, decoder, str(final)).inc()
                    metrics.LATENCY.labels(route, decoder).observe(time.perf_counter() - start)
                    set_attributes(current, route=route, decoder=decoder, **{"http.response.status_code": final})

    @staticmethod
    def _span(scope: Scope, route: str | None) -> AbstractContextManager[Any]:
        """The request's span (generation and scoring routes only), a child of the client's ``traceparent``."""
        if route is None or not tracing_enabled():
            return nullcontext(None)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        method, path = scope.get("method", ""), scope.get("path", "")
        attributes = {"http.request.method": method, "url.path": path}
        return span(f"{method} {path}", parent=extract(headers), kind="server", **attributes)
