"""Response schemas every endpoint family shares: errors, candidates, and the ``alignment`` object.

These models are what ``/openapi.json`` documents and what the routes return, so client generators and contract
testers read the real shapes. A candidate becomes JSON in exactly one place, :meth:`CandidateOut.of`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..decoders import Candidate


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    """The request field at fault, dotted for nested ones (``decoder.num_candidates``)."""
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape (streams send it as one ``data:`` event before ``[DONE]``)."""

    error: ErrorBody


class Scores(BaseModel):
    reward: float | None = None
    """The request's combined reward (the weighted sum of its rewards); ``null`` when unscored or dropped."""
    rewards: dict[str, float | None] = Field(default_factory=dict)
    """Each reward's raw score."""
    calibrated_reward: float | None = None
    """``ctrl``: the win rate against the model's own samples, in [0, 1]."""
    score: float | None = None
    """The decoder's own ranking score where it has one (beam log-prob, search value)."""


class CandidateOut(Scores):
    """A candidate a decoder weighed."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None = None
    dropped: str | None = None
    """Why the candidate was excluded from selection (its reward failed), if it was."""

    @classmethod
    def of(cls, c: Candidate) -> CandidateOut:
        return cls(
            index=c.index,
            text=c.text,
            num_tokens=c.num_tokens,
            finish_reason=c.finish_reason,
            reward=c.reward,
            rewards=c.rewards,
            calibrated_reward=c.calibrated,
            score=c.score,
            dropped=c.dropped,
        )


class AlignmentChoice(Scores):
    """What the decoder knew about a returned choice."""

    index: int
    candidate_index: int
    """The choice's index among the candidates."""

    @classmethod
    def of(cls, index: int, c: Candidate) -> AlignmentChoice:
        scores = CandidateOut.of(c).model_dump(include=set(Scores.model_fields))
        return cls(index=index, candidate_index=c.index, **scores)


class EngineWorkOut(BaseModel):
    calls: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    seconds: float


class AlignmentUsage(BaseModel):
    """Everything the request cost: ``engine_*`` count every token the engine processed for it (candidates,
    lookaheads, reference samples, and what rewards such as a judge spent), by source in ``engine_by_source``."""

    prompt_tokens: int
    completion_tokens: int
    engine_calls: int
    engine_requests: int
    engine_prompt_tokens: int
    engine_completion_tokens: int
    engine_cached_tokens: int
    engine_new_tokens: int
    """Generated tokens plus prompt tokens not read from the prefix cache: what budgets count."""
    engine_seconds: float
    engine_by_source: dict[str, EngineWorkOut]
    """``decoder`` (the decoder's own calls) and ``reward:<name>`` (each reward that runs on an engine)."""
    reward_calls: int
    candidates_scored: int
    reward_seconds: float
    reward_seconds_by_name: dict[str, float]


class Alignment(BaseModel):
    """What alignd adds to an OpenAI response: the decoder, the choices' rewards, the work and time spent."""

    decoder: str
    decoder_params: dict[str, Any]
    reward: list[str]
    choices: list[AlignmentChoice]
    usage: AlignmentUsage
    timings: dict[str, float]
    """Seconds per phase (``engine``, ``reward``, ``orchestration``, ``total`` and the decoder's own)."""
    info: dict[str, Any] | list[dict[str, Any]] | None = None
    """Decoder-specific facts (``threshold_reached``, ``steps``...); a list with several prompts."""
    candidates: list[CandidateOut] | list[list[CandidateOut]] | None = None
    """Every candidate, with ``return_candidates`` (a list per prompt with several prompts)."""


_ERRORS = {
    400: "Invalid request: malformed JSON, a value out of bounds or over a server limit (`param` names the field)",
    401: "Missing or wrong API key (when the server has `api_keys`)",
    404: "Unknown model, decoder or reward (`param` names the field)",
    413: "Request body over the server's `limits.max_body_bytes`",
    429: "The server is serving its maximum of concurrent requests; retry after `Retry-After` seconds",
    500: "A reward failed under `on_error: fail`, or an internal error (sanitized message)",
    501: "A feature alignd does not support (`tools`, a non-text `response_format`)",
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
