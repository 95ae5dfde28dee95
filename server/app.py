"""The FastAPI application: routers, error handlers, authentication, CORS and the engine lifecycle.

Engines load in the background after the socket opens, so ``/health`` answers 503 ("loading") until every
engine and reward is ready, then 200. If loading fails the process exits instead of serving half a config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from .. import __version__, tracing
from ..engines.protocol import Engine
from .admin.api_router import router as admin_router
from .align.api_router import router as align_router
from .auth import PUBLIC_PATHS, check_api_key
from .errors import install_handlers
from .generation.serving import Serving
from .middleware import RequestBoundary
from .openai.chat.api_router import router as chat_router
from .openai.completions.api_router import router as completions_router
from .openai.responses.api_router import router as responses_router
from .playground import install as install_playground
from .runtime import Runtime, build_engines
from .settings import Settings

log = logging.getLogger("alignd")


def _stop_process() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # the CLI exits 1, so a supervisor sees the failure


def create_app(
    settings: Settings,
    engines: dict[str, Engine] | None = None,
    *,
    on_start_failure: Callable[[], None] = _stop_process,
) -> FastAPI:
    """Build the app for ``settings``; ``engines`` overrides the engines built from ``settings.models``.
    ``on_start_failure`` runs if an engine or reward cannot load (default: stop this process)."""
    runtime = Runtime(settings, engines if engines is not None else build_engines(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tracing.configure(settings.otlp_traces_endpoint, protocol=settings.otlp_traces_protocol)

        async def load() -> None:
            try:
                await runtime.start()
                log.info("alignd ready: models %s, rewards %s", sorted(runtime.engines), sorted(runtime.rewards))
            except Exception:
                log.exception("start-up failed; shutting down")
                runtime.failed = True
                on_start_failure()

        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            await runtime.shutdown()
            tracing.shutdown()

    app = FastAPI(
        title="alignd",
        version=__version__,
        description="Inference-time alignment: reward-guided decoding on vLLM, OpenAI-compatible.",
        lifespan=lifespan,
        dependencies=[Depends(check_api_key)],
    )
    app.state.runtime = runtime
    app.state.serving = Serving(runtime)
    app.state.api_keys = [k.get_secret_value().encode() for k in settings.api_keys]
    app.state.started = int(time.time())
    install_handlers(app)

    if settings.cors_origins:
        wildcard = "*" in settings.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=not wildcard,  # never credentials with "*"
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.include_router(completions_router)
    app.include_router(chat_router)
    app.include_router(responses_router)
    app.include_router(align_router)
    app.include_router(admin_router)
    if settings.playground:
        install_playground(app)
    # Added last, so it is the outermost middleware: inside it, every error becomes a response.
    app.add_middleware(RequestBoundary, max_body_bytes=settings.limits.max_body_bytes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document as the server behaves: FastAPI's 422 answers never happen (validation errors are
    400s, documented per route), and every route but /health and /metrics needs the bearer key."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                if path in PUBLIC_PATHS:
                    operation["security"] = []
        components = schema.setdefault("components", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema
