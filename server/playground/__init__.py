"""The playground: a page served by alignd itself that runs several decoder configurations side by side.

Static files shipped in the package (no CDN, no fonts or scripts from anywhere else, no build step): the page
works offline. It is public, like the files of any web app; the API calls it makes carry the key the user types
into it, which stays in the browser's session storage. ``playground: false`` in the configuration removes it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PREFIX = "/playground"

# Everything the page loads comes from this server, and model output can never run as script.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse(PREFIX)


@router.get(PREFIX)
async def playground() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=_HEADERS)


class _StaticFiles(StaticFiles):
    async def get_response(self, path, scope):  # type: ignore[no-untyped-def]
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the playground page at ``/playground`` (and redirect ``/`` to it)."""
    app.include_router(router)
    app.mount(f"{PREFIX}/static", _StaticFiles(directory=STATIC), name="playground-static")
