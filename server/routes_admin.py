"""Discovery, scoring and operations routes: models, decoders, rewards, health and metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field

from ..decoders import decoder_registry
from ..rewards import RewardError, RewardSet, RewardTerm, reward_kinds
from . import metrics
from .errors import BadRequest, NotFound, error_body
from .openai_protocol import ChatMessageIn
from .protocol import StrictModel
from .runtime import Runtime

router = APIRouter()


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Served models, in OpenAI's list shape."""
    rt = _runtime(request)
    created = request.app.state.started
    data = []
    for name, engine in rt.engines.items():
        data.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "alignd",
                "max_model_len": engine.info.max_model_len or None,
            }
        )
    return {"object": "list", "data": data}


@router.get("/v1/decoders")
async def list_decoders() -> dict[str, Any]:
    """Every decoder with the JSON schema of its parameters."""
    data = []
    for name, cls in sorted(decoder_registry().items()):
        data.append(
            {
                "name": name,
                "description": cls.description or (cls.__doc__ or "").strip().split("\n")[0],
                "requires_reward": cls.requires_reward,
                "streams_tokens": cls.streams_tokens,
                "params_schema": cls.Params.model_json_schema(),
            }
        )
    return {"object": "list", "data": data}


@router.get("/v1/rewards")
async def list_rewards(request: Request) -> dict[str, Any]:
    """Declared rewards (what requests may name) and the reward kinds the configuration may declare."""
    rt = _runtime(request)
    return {
        "object": "list",
        "data": [reward.describe() for reward in rt.rewards.values()],
        "kinds": sorted(reward_kinds()),
    }


class ScoreRequest(StrictModel):
    """``POST /v1/rewards/{name}/score``: score given texts against a prompt, to debug a reward."""

    prompt: str | list[ChatMessageIn] = ""
    completions: list[str] = Field(..., min_length=1, max_length=256)
    params: dict[str, Any] = Field(default_factory=dict)


@router.post("/v1/rewards/{name}/score")
async def score(name: str, body: ScoreRequest, request: Request) -> dict[str, Any]:
    """Score ``completions`` with one declared reward; returns one score per completion."""
    rt = _runtime(request)
    reward = rt.rewards.get(name)
    if reward is None:
        raise NotFound(f"reward {name!r} is not declared; available: {', '.join(sorted(rt.rewards))}", param="name")
    if body.params:
        try:
            reward = reward.with_overrides(body.params)
        except ValueError as exc:
            raise BadRequest(str(exc), param="params") from None
    prompt = body.prompt if isinstance(body.prompt, str) else [m.as_template_message() for m in body.prompt]
    start = time.perf_counter()
    async with rt.admit():
        try:
            scores = await RewardSet([RewardTerm(reward)]).score(prompt, body.completions)
        except RewardError:
            metrics.REWARD_FAILURES.labels(name).inc()
            raise
    elapsed = time.perf_counter() - start
    metrics.REWARD_LATENCY.labels(name).observe(elapsed)
    return {
        "object": "reward.scores",
        "reward": name,
        "scores": scores.per_reward[name],
        "dropped": {str(k): v for k, v in scores.dropped.items()},
        "seconds": elapsed,
    }


@router.get("/health")
async def health(request: Request) -> Response:
    """200 when every engine answers; 503 while loading, draining, or when an engine died."""
    rt = _runtime(request)
    states = await rt.health()
    ok = rt.ready and not rt.draining and all(v == "ok" for v in states.values())
    status = "ok" if ok else ("draining" if rt.draining else ("loading" if not rt.ready else "unhealthy"))
    body = {"status": status, "engines": states}
    if not ok:
        body.update(error_body(f"server is {status}", "service_unavailable_error"))
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    """Prometheus metrics of alignd and of the vLLM engines in this process."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
