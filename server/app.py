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
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from ..engines.protocol import Engine
from .auth import check_api_key
from .errors import error_body, install_handlers
from .routes_admin import router as admin_router
from .routes_align import router as align_router
from .routes_openai import router as openai_router
from .runtime import Runtime, build_engines
from .serving import Serving
from .settings import Settings

log = logging.getLogger("alignd")


def create_app(settings: Settings, engines: dict[str, Engine] | None = None) -> FastAPI:
    """Build the app for ``settings``; ``engines`` overrides the engines built from ``settings.models``."""
    runtime = Runtime(settings, engines if engines is not None else build_engines(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load() -> None:
            try:
                await runtime.start()
                log.info("alignd ready: models %s, rewards %s", sorted(runtime.engines), sorted(runtime.rewards))
            except Exception:
                log.exception("start-up failed; shutting down")
                runtime.failed = True  # the CLI exits 1, so a supervisor sees the failure
                os.kill(os.getpid(), signal.SIGTERM)

        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            await runtime.shutdown()

    app = FastAPI(
        title="alignd",
        version="0.1.0",
        description="Inference-time alignment: reward-guided decoding on vLLM, OpenAI-compatible.",
        lifespan=lifespan,
        dependencies=[Depends(check_api_key)],
    )
    app.state.runtime = runtime
    app.state.serving = Serving(runtime)
    app.state.api_keys = [k.get_secret_value().encode() for k in settings.api_keys]
    app.state.started = int(time.time())
    install_handlers(app)
    limit = settings.limits.max_body_bytes

    @app.middleware("http")
    async def bounded_body(request: Request, call_next):
        # Refuse oversized bodies from their declared length before reading them (413, OpenAI shape).
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return JSONResponse(
                error_body(f"request body is over this server's limit of {limit} bytes", "invalid_request_error"),
                status_code=413,
            )
        return await call_next(request)

    if settings.cors_origins:
        wildcard = "*" in settings.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=not wildcard,  # never credentials with "*"
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.include_router(openai_router)
    app.include_router(align_router)
    app.include_router(admin_router)
    return app
