"""The engine protocol: everything a decoder or a reward may ask of a language-model engine.

Decoders never see vLLM. They see an :class:`Engine`, which samples from token-id prompts (several prompts in one
call, ``n`` samples each, with per-step top-k log-probs), scores given continuations, tokenizes, aborts and
reports health. The adapter for an in-process vLLM ``AsyncLLM`` is :mod:`alignd.engines.vllm_local`; the test
suite has a scripted engine with hand-chosen log-probs (``tests/scripted_engine.py``).

Batching is part of the contract: ``generate`` takes a list of prompts because DeAL and Transfer Q* expand every
candidate of a step at once, and the engine must schedule them together so the shared prefix is read from the
prefix cache instead of being recomputed per candidate.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "abort", "budget"]
"""Why an answer ended; ``budget``: a decoder stopped it when the request's budget ran out (never the engine)."""
ChatMessage = dict[str, Any]


class EngineError(RuntimeError):
    """The engine failed a request (not the caller's fault); mapped to HTTP 500/503."""


class EngineUnavailable(EngineError):
    """The engine is not running: still loading, shut down, or dead."""


class EngineUpstreamError(EngineError):
    """A remote engine server failed or timed out on a request (not a connection error); mapped to HTTP 502."""


class EngineRequestError(ValueError):
    """The engine refused a request as invalid (too long a prompt, bad parameter); mapped to HTTP 400."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


ConstraintKind = Literal["json", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True, slots=True)
class Constraint:
    """What every sampled answer must match, enforced token by token by the engine (vLLM's structured outputs).

    ``json``: a JSON schema (kept as canonical JSON text, so the config stays hashable); ``json_object``: any JSON
    object; ``regex``: a regular expression; ``choice``: one of the given strings; ``grammar``: an EBNF/GBNF
    grammar. The constraint holds from the first generated token, or, with ``SamplingConfig.constraint_start``,
    from a position of the prompt: a decoder that extends a committed part of the answer has the grammar continue
    over it (:mod:`alignd.engines.grammar`).

    >>> Constraint.of("choice", ["yes", "no"]).vllm_fields()
    {'choice': ['yes', 'no']}
    """

    kind: ConstraintKind
    value: str | tuple[str, ...] | None = None

    @classmethod
    def of(cls, kind: ConstraintKind, value: Any = None) -> Constraint:
        if kind == "json":
            # the order of a schema's properties is the order the grammar writes them in: kept as given
            return cls(kind, value if isinstance(value, str) else json.dumps(value))
        if kind == "choice":
            return cls(kind, tuple(value))
        return cls(kind, value)

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema of a ``json`` constraint."""
        return json.loads(self.value) if self.kind == "json" and isinstance(self.value, str) else None

    def vllm_fields(self) -> dict[str, Any]:
        """The constraint as the fields of vLLM's ``StructuredOutputsParams`` (and of its server's
        ``structured_outputs`` object)."""
        if self.kind == "json_object":
            return {"json_object": True}
        if self.kind == "json":
            return {"json": self.schema}
        if self.kind == "choice":
            return {"choice": list(self.value or ())}
        return {self.kind: self.value}


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """Engine-neutral sampling parameters for one :meth:`Engine.generate` call.

    Mirrors the subset of vLLM's ``SamplingParams`` that the decoders need; every adapter maps it to its engine.

    >>> SamplingConfig(n=4, max_tokens=32, temperature=1.0, logprobs=5).greedy
    False
    """

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k filtering."""
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None
    """Top-k log-probs to return at every generated position (0: only the chosen token's)."""
    logprob_token_ids: tuple[int, ...] = ()
    """Log-probs of exactly these tokens at every generated position (verdict tokens of a judge)."""
    prompt_logprobs: int | None = None
    """Top-k log-probs to return at every prompt position, with the prompt token's own (0: only its own)."""
    skip_special_tokens: bool = True
    constraint: Constraint | None = None
    """What every sampled answer must match (structured outputs), from its first generated token."""
    constraint_start: int | None = None
    """With a ``constraint``: the position of every prompt where the constrained answer began. The prompt's tokens
    from there on are a committed part of the answer, which the grammar is advanced over before the first
    generated token (an engine whose info says ``prefix_grammar`` can; None: the answer starts with the output)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def but(self, **changes: Any) -> SamplingConfig:
        """A copy with ``changes`` applied (decoders derive step-level configs from the user's)."""
        return replace(self, **changes)


@dataclass(slots=True)
class Completion:
    """One sampled continuation of a prompt."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None
    logprobs: list[float] | None = None
    """Log-prob of each generated token under the model (raw, before temperature), when requested."""
    top_logprobs: list[dict[int, float]] | None = None
    """Per position, the top-k alternatives (and any ``logprob_token_ids``) with their log-probs."""
    cumulative_logprob: float | None = None
    stop_reason: int | str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(slots=True)
class Generation:
    """All completions of one prompt, with the prompt's token count and prefix-cache hits."""

    prompt_token_ids: list[int]
    completions: list[Completion]
    num_cached_tokens: int = 0
    prompt_logprobs: list[dict[int, float] | None] | None = None
    """With ``SamplingConfig.prompt_logprobs``: per prompt position, the prompt token's log-prob and the top-k
    alternatives (``None`` at the first position, which nothing precedes)."""

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.completions)


@dataclass(slots=True)
class StreamDelta:
    """New tokens of one completion since the previous delta; ``finish_reason`` is set on the last one."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    finish_reason: FinishReason | None = None
    num_cached_tokens: int | None = None
    """Prompt tokens the engine's prefix cache served, on the one delta of a stream that reports them (vLLM in
    process: the first; a remote server: the last, where its usage arrives); None on every other delta."""


@runtime_checkable
class Tokenizer(Protocol):
    """What decoders and rewards need from a tokenizer."""

    eos_token_id: int | None

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...

    def token_to_str(self, token_id: int) -> str: ...

    def apply_chat_template(
        self,
        messages: Sequence[ChatMessage],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> str:
        """``messages`` (and ``tools``, where the template renders them) as the model reads a conversation."""
        ...


@dataclass(slots=True)
class EngineInfo:
    """Static facts about a served model."""

    name: str
    max_model_len: int
    vocab_size: int
    max_logprobs: int
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    prefix_grammar: bool = False
    """Whether a constraint can continue from ``SamplingConfig.constraint_start`` (alignd's grammar processor is
    loaded), so decoders that extend a committed prefix can keep to a structured-output shape."""
    json_whitespace: bool = False
    """Whether the engine's JSON grammars allow whitespace between tokens (vLLM's ``disable_any_whitespace`` off);
    alignd's own grammar follows it, so a continued answer keeps the shape a fresh one has."""


@runtime_checkable
class Engine(Protocol):
    """A language-model engine as decoders see it.

    Every method that starts engine work takes a ``request_id``; sub-requests use ``f"{request_id}-{i}"`` and
    all of them are aborted if the call is cancelled, so a client that disconnects leaves nothing running.

    **One session, one replica.** Every method that starts engine work also takes the ``session`` it belongs to:
    the request whose steps, rounds, lookaheads, rollouts, reference samples and reward calls it serves. An engine
    with several replicas (vLLM's data-parallel ranks, servers behind a router, a list of servers) serves every call
    of one session on one replica, chosen when the session's first call arrives, so that replica's prefix cache
    serves what the session prefilled before; different sessions spread. ``None`` (a script that set no session):
    each call may go anywhere. Decoders never pass it themselves: the metered engine of their
    :class:`~alignd.decoders.DecodeContext` does, and rewards' engine calls inherit it (:func:`bound_session`).
    """

    info: EngineInfo
    tokenizer: Tokenizer

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def check_health(self) -> None:
        """Return if the engine can serve; raise :class:`EngineUnavailable` if not."""
        ...

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingConfig, request_id: str, *, session: str | None = None
    ) -> list[Generation]:
        """Sample ``params.n`` completions for each prompt, all prompts scheduled together; one result each.

        With a seed, prompt ``k``'s completions are drawn as :func:`seeded_apart` says: completion ``j`` of prompt
        ``k`` with seed ``seed + k * n + j``, so no two completions of one call share a random stream, even of
        equal prompts (a resampled particle and its copy must be able to diverge)."""
        ...

    def stream(
        self, prompt: Sequence[int], params: SamplingConfig, request_id: str, *, session: str | None = None
    ) -> AsyncIterator[StreamDelta]:
        """Yield completions of one prompt token by token, as the engine produces them."""
        ...

    async def continuation_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        request_id: str,
        *,
        session: str | None = None,
    ) -> list[list[float]]:
        """Log-prob of every token of ``continuations[i]`` following ``prompts[i]``, under the model."""
        ...

    async def abort(self, request_ids: Sequence[str]) -> None: ...


PoolingTask = Literal["classify", "token_classify"]
"""``classify``: one row of logits per input (a sequence classifier); ``token_classify``: a row per token (a
process reward model, read at its step tags)."""


@runtime_checkable
class Pooler(Protocol):
    """A pooling model that rewards score with (a reward model, a process reward model): raw logits, no
    activation, so a reward applies its own. Built by :func:`alignd.engines.registry.open_pooler`."""

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def pool(self, prompts: Sequence[Sequence[int]], task: PoolingTask, request_id: str) -> list[Any]:
        """Every prompt pooled in one call: per prompt, a row of logits (``classify``) or one row per token
        (``token_classify``; for a process reward model, the rows at its step tags)."""
        ...


_SESSION: ContextVar[str | None] = ContextVar("alignd_engine_session", default=None)


@contextmanager
def bound_session(session: str | None) -> Iterator[None]:
    """Inside the block, engine calls made without a session of their own belong to ``session`` (what a reward that
    runs on an engine, a judge, inherits from the request it scores for). The block must not span a ``yield``.

    >>> with bound_session("req-1"):
    ...     current_session()
    'req-1'
    >>> current_session() is None
    True
    """
    token = _SESSION.set(session)
    try:
        yield
    finally:
        _SESSION.reset(token)


def current_session() -> str | None:
    """The session :func:`bound_session` set for this task, if any."""
    return _SESSION.get()


def seeded_apart(params: SamplingConfig, k: int) -> SamplingConfig:
    """Prompt ``k``'s sampling in a call of several prompts: its seed moved past the ``k * n`` completions of the
    prompts before it. vLLM itself seeds a request's ``j``-th completion ``seed + j``, so a call's completions get
    the seeds ``seed .. seed + len(prompts) * n - 1``, each one stream.

    >>> [seeded_apart(SamplingConfig(n=2, seed=10), k).seed for k in range(3)]
    [10, 12, 14]
    >>> seeded_apart(SamplingConfig(n=2), 1).seed is None
    True
    """
    if params.seed is None or k == 0:
        return params
    return params.but(seed=params.seed + k * params.n)


def finish_reason(reason: str | None) -> FinishReason | None:
    """vLLM's finish reason in the protocol's terms (anything but length and abort is a stop)."""
    if reason is None:
        return None
    return reason if reason in ("stop", "length", "abort") else "stop"  # type: ignore[return-value]


async def continuation_logprobs(
    engine: Engine,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    request_id: str,
    session: str | None = None,
) -> list[list[float]]:
    """:meth:`Engine.continuation_logprobs` for adapters whose ``generate`` returns prompt log-probs: each prompt
    + continuation is scored in one call with ``prompt_logprobs=0`` (the log-prob of every actual token; one
    token is generated because engines need ``max_tokens >= 1``)."""
    sequences = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    gens = await engine.generate(
        sequences, SamplingConfig(max_tokens=1, temperature=0.0, prompt_logprobs=0), request_id, session=session
    )
    return [
        continuation_values(len(prompt), cont, gen.prompt_logprobs or [])
        for prompt, cont, gen in zip(prompts, continuations, gens)
    ]


def continuation_values(
    prompt_len: int, continuation: Sequence[int], rows: Sequence[dict[int, float] | None]
) -> list[float]:
    """The log-prob of each continuation token, read from per-position prompt log-prob ``rows`` of
    prompt + continuation (vLLM's ``prompt_logprobs``); -inf where a row lacks the token.

    >>> continuation_values(1, [7, 8], [None, {7: -0.5}, {9: -0.1}])
    [-0.5, -inf]
    """
    values = []
    for pos, token in enumerate(continuation, start=prompt_len):
        row = rows[pos] if pos < len(rows) else None
        values.append(row[token] if row and token in row else -math.inf)
    return values


def logsumexp(values: Sequence[float]) -> float:
    """Numerically stable log(sum(exp(v))); -inf for an empty or all -inf input."""
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The first leaf exception of a (nested) exception group: what a caller of one request would have seen."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
