"""The native API: ``POST /v1/align`` answers with the chosen text, every candidate, usage and timings."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from ..engines.protocol import Engine
from . import metrics
from .align_protocol import AlignRequest
from .rendering import chat_prompt, text_prompt
from .serving import Serving, alignment_dict, new_request_id, status_of, usage_dict

router = APIRouter()


def _render(body: AlignRequest):
    def render(engine: Engine):
        if body.messages is not None:
            return [chat_prompt(engine, body.messages)]
        return [text_prompt(engine, body.prompt or "")]

    return render


@router.post("/v1/align")
async def align(body: AlignRequest, request: Request) -> dict:
    """Decode one prompt with the requested decoder and rewards."""
    serving: Serving = request.app.state.serving
    start = time.perf_counter()
    decoder = body.decoder_name
    error: BaseException | None = None
    try:
        prepared = serving.prepare(body, _render(body), new_request_id("align"))
        decoder = prepared.decoder.name
        async with serving.runtime.admit():
            [result] = await serving.run(prepared, request)
        alignment = alignment_dict(prepared, [result], body.return_candidates)
        return {
            "id": prepared.request_id,
            "object": "alignment",
            "created": prepared.created,
            "model": prepared.model,
            "decoder": alignment["decoder"],
            "decoder_params": alignment["decoder_params"],
            "reward": alignment["reward"],
            "choices": [
                {
                    "index": i,
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "reward": c.reward,
                    "rewards": c.rewards,
                    "calibrated_reward": c.calibrated,
                    "score": c.score,
                    "candidate_index": c.index,
                }
                for i, c in enumerate(result.choices)
            ],
            "candidates": alignment.get("candidates"),
            "usage": {**usage_dict([result], prepared), **alignment["usage"]},
            "timings": alignment["timings"],
            "info": result.info,
        }
    except BaseException as exc:
        error = exc
        raise
    finally:
        metrics.REQUESTS.labels("align", decoder, str(status_of(error))).inc()
        metrics.LATENCY.labels("align", decoder).observe(time.perf_counter() - start)
