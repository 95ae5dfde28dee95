"""Talking to alignd for an evaluation: a running server (``--url``), or one started in this process.

Every answer is requested as a stream with ``stream_options.include_usage`` and ``return_candidates``, so one
code path measures the time to the first token and still receives the ``alignment`` object (every candidate,
usage, timings) in the usage chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from .config import EvalInputError


class RequestFailed(RuntimeError):
    """The server answered one evaluation request with an error (kept in the results, not fatal)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Answer:
    """One streamed answer: the text of each choice, and what alignd reported about it."""

    texts: list[str]
    finish_reasons: list[str | None]
    alignment: dict[str, Any]
    ttft_s: float | None
    wall_s: float
    usage: dict[str, Any] = field(default_factory=dict)


class EvalClient:
    """An HTTP client for one alignd server."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 900.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)

    async def close(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str) -> dict[str, Any]:
        try:
            response = await self.http.get(path)
        except httpx.HTTPError as exc:
            raise EvalInputError(f"cannot reach the alignd server at {self.base_url}: {exc}") from None
        if response.status_code == 401:
            raise EvalInputError(f"the server at {self.base_url} refused the API key; pass the right --api-key")
        if response.status_code >= 400:
            raise EvalInputError(f"GET {path} answered {response.status_code}: {_message(response)}")
        return response.json()

    async def describe(self) -> dict[str, Any]:
        """The server's models, decoders, declared rewards (name -> kind) and versions."""
        models = await self._get("/v1/models")
        decoders = await self._get("/v1/decoders")
        rewards = await self._get("/v1/rewards")
        version = await self._get("/version")
        return {
            "models": [m["id"] for m in models["data"]],
            "decoders": {d["name"]: d for d in decoders["data"]},
            "rewards": {r["name"]: r["kind"] for r in rewards["data"]},
            "version": version,
        }

    async def answer(self, body: dict[str, Any], chat: bool) -> Answer:
        """Stream one request; raise :class:`RequestFailed` on an error status or an error event."""
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {**body, "stream": True, "stream_options": {"include_usage": True}, "return_candidates": True}
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        alignment: dict[str, Any] = {}
        usage: dict[str, Any] = {}
        ttft = None
        start = time.perf_counter()
        async with self.http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                raise RequestFailed(_message(response), response.status_code)
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise RequestFailed(event["error"].get("message", "stream error"), event["error"].get("code"))
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if piece and ttft is None:
                        ttft = time.perf_counter() - start
                    texts.setdefault(choice["index"], []).append(piece or "")
                    if choice.get("finish_reason"):
                        finish[choice["index"]] = choice["finish_reason"]
                if event.get("alignment"):
                    alignment, usage = event["alignment"], event.get("usage") or {}
        count = max(texts, default=-1) + 1
        return Answer(
            texts=["".join(texts.get(i, [])) for i in range(count)],
            finish_reasons=[finish.get(i) for i in range(count)],
            alignment=alignment,
            ttft_s=ttft,
            wall_s=time.perf_counter() - start,
            usage=usage,
        )

    async def align(self, body: dict[str, Any]) -> dict[str, Any]:
        """One ``/v1/align`` request (every candidate with its rewards)."""
        response = await self.http.post("/v1/align", json=body)
        if response.status_code >= 400:
            raise RequestFailed(_message(response), response.status_code)
        return response.json()

    async def score(self, reward: str, prompt: Any, completions: list[str], params: dict[str, Any]) -> list[float]:
        """Scores of ``completions`` by the declared reward ``reward`` (a held-out reward)."""
        body = {"prompt": prompt, "completions": completions, "params": params}
        response = await self.http.post(f"/v1/rewards/{reward}/score", json=body)
        if response.status_code >= 400:
            raise RequestFailed(f"reward {reward}: {_message(response)}", response.status_code)
        return response.json()["scores"]


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300] or f"HTTP {response.status_code}"


@asynccontextmanager
async def local_server(settings: Any, timeout_s: float = 600.0) -> AsyncIterator[str]:
    """Serve ``settings`` (an :class:`~alignd.server.settings.Settings`) on a free loopback port in this process,
    for as long as the block runs; yields the base URL once ``/health`` says 200."""
    import uvicorn

    from ..server.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    holder: list[uvicorn.Server] = []
    app = create_app(settings, on_start_failure=lambda: setattr(holder[0], "should_exit", True))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    holder.append(server)
    # Ctrl-C belongs to the evaluation (it stops, then reports what finished): uvicorn must not take the signal
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as http:
            while True:
                if task.done() or app.state.runtime.failed:
                    raise EvalInputError("the in-process alignd server failed to start; see the log above")
                try:
                    if (await http.get(url + "/health", timeout=2)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise EvalInputError(f"the in-process alignd server was not healthy after {timeout_s:.0f} s")
                await asyncio.sleep(0.5)
        yield url
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        logging.getLogger("alignd").info("in-process server stopped")
