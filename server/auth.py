"""Bearer-key authentication. With ``api_keys`` configured every route needs a key except ``/health`` and
``/metrics``, which stay public for load balancers and Prometheus. Keys are compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import Unauthorized

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/", "/playground"})
"""Routes open without a key: probes, metrics, and the playground page (whose API calls carry the user's key)."""


def check_api_key(request: Request) -> None:
    """FastAPI dependency: raise 401 unless the request carries one of the configured keys."""
    keys = request.app.state.api_keys
    if not keys or request.url.path in PUBLIC_PATHS:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    supplied = token.strip().encode() if scheme.lower() == "bearer" else b""
    # Compare against every key without stopping early, so timing does not tell which prefix matched.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(supplied, key)
    if not ok:
        raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'", code="invalid_api_key")
