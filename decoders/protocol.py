"""The decoder protocol: a decoder turns one request into answers by driving an engine and scoring with rewards.

A decoder is a small class generic over its pydantic parameters (``extra="forbid"``, every number bounded) with
an ``async decode(request, context)``. It sees only the engine protocol and a :class:`~alignd.rewards.RewardSet`,
never HTTP, so it runs from a plain script as well as from the server::

    decoder = BestOfN(BestOfNParams(num_candidates=8))
    result = await decoder.decode(request, DecodeContext(engine, rewards))

Before any work, :meth:`Decoder.prepare` checks a request against the decoder (does it need a reward, can it
return ``n`` answers) and renders the prompt the model will actually read (URIAL wraps the conversation in its
prefix, DeAL may prepend an instruction); the context-length check runs there, once, on that prompt. The server
calls it while validating a request, so a refusal comes before any engine work; ``decode`` calls it too (it is
idempotent), so a script need not.

Decoders register by name with :func:`register`; third-party decoders come from the entry-point group
``alignd.decoders`` (see :mod:`alignd.registry` for the plug-in policy).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from ..engines.protocol import Engine, EngineInfo, StreamDelta, Tokenizer
from ..registry import Registry, params_class
from ..rewards.protocol import RewardError
from ..rewards.scoring import RewardSet
from .context import DecodeContext
from .types import Candidate, Cost, DecodeRequest, DecoderError, DecodeResult


class DecoderParams(BaseModel):
    """Base of every decoder's parameters: unknown fields are errors and docstrings become the JSON schema."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


CAPS = frozenset({"max_n", "max_candidates", "max_tokens", "max_logprobs"})
"""The server limits (``limits.<name>``) a decoder parameter can be capped by; the server has each of them."""
_CAP_KEY = "x-alignd-cap"


def cap(limit: str) -> dict[str, Any]:
    """``json_schema_extra`` marking a field as bounded by the server limit ``limit`` (checked before any work).
    A name that is not one of :data:`CAPS` is refused here, when the decoder's module is imported.

    >>> from pydantic import Field
    >>> Field(4, ge=1, le=1024, json_schema_extra=cap("max_candidates")).json_schema_extra
    {'x-alignd-cap': 'max_candidates'}
    >>> cap("max_candidtes")
    Traceback (most recent call last):
    ...
    ValueError: cap('max_candidtes') names no server limit; use one of max_candidates, max_logprobs, max_n, max_tokens
    """
    if limit not in CAPS:
        raise ValueError(f"cap({limit!r}) names no server limit; use one of {', '.join(sorted(CAPS))}")
    return {_CAP_KEY: limit}


def caps_of(params: type[BaseModel]) -> dict[str, str]:
    """Each capped field of a parameters model and the server limit that caps it; a limit the server does not
    have is a ``ValueError`` naming the field (for caps written without :func:`cap`)."""
    caps = {}
    for field, info in params.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        limit = extra.get(_CAP_KEY)
        if limit is None:
            continue
        if limit not in CAPS:
            raise ValueError(
                f"{params.__name__}.{field} is capped by {limit!r}, which is no server limit; use one of "
                f"{', '.join(sorted(CAPS))}"
            )
        caps[field] = str(limit)
    return caps


P = TypeVar("P", bound=DecoderParams)


class Decoder(ABC, Generic[P]):
    """Base class of decoders: ``class BestOfN(Decoder[BestOfNParams])`` sets ``Params`` from the type argument.

    ``streams_tokens`` says whether :meth:`stream` yields tokens as the engine decides them; decoders that must
    see every candidate before choosing stream the chosen answer after selection (the default :meth:`stream`).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[DecoderParams]] = DecoderParams
    """What a request may set (bounded; capped fields are checked against the server's limits)."""
    Options: ClassVar[type[DecoderParams]] = DecoderParams
    """What only the operator may set, under ``decoder_options.<name>`` in the configuration (file paths...)."""
    requires_reward: ClassVar[bool] = False
    streams_tokens: ClassVar[bool] = False
    single_answer: ClassVar[bool] = False
    """Whether the decoder returns one answer only (a request with ``n`` > 1 is refused on ``n``)."""
    anytime: ClassVar[bool] = False
    """Whether the decoder can stop at the best answer found so far when the request's budget runs out (it
    checks :meth:`DecodeContext.affordable` between rounds or steps)."""
    structured_output: ClassVar[bool] = False
    """Whether every candidate the decoder draws can be constrained to a ``response_format`` (a JSON schema...)."""
    continues_prefix: ClassVar[bool] = False
    """Whether the decoder asks the engine to continue committed parts of the answer (lookaheads, blocks, steps,
    resampled suffixes): keeping those to a shape needs an engine that continues a grammar from a prompt position
    (:attr:`~alignd.engines.protocol.EngineInfo.prefix_grammar`)."""
    description: ClassVar[str] = ""

    params: P

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = params_class(cls, DecoderParams)
        if params is not None:
            cls.Params = params

    def __init__(self, params: P | None = None, options: DecoderParams | None = None):
        self.params = params if params is not None else cast(P, self.Params())
        self.options = options if options is not None else self.Options()

    @classmethod
    def supports(cls) -> dict[str, Any]:
        """What the decoder supports, as ``GET /v1/decoders`` publishes it: stopping at a ``budget``, what it
        streams (``tokens`` as it decides them, or the ``answer`` once chosen), several answers (``n`` > 1),
        ``structured_output``, and whether it ``continues_prefix`` (a shape then needs the engine's grammar
        processor)."""
        return {
            "budget": cls.anytime,
            "streaming": "tokens" if cls.streams_tokens else "answer",
            "n": not cls.single_answer,
            "structured_output": cls.structured_output,
            "continues_prefix": cls.continues_prefix,
        }

    # ---- before any work -------------------------------------------------------------------------------------

    def prepare(
        self, request: DecodeRequest, engine: Engine, rewards: RewardSet | None, *, fit_max_tokens: bool = False
    ) -> DecodeRequest:
        """``request`` checked against this decoder and rendered as the model will read it; idempotent.

        Refuses (:class:`DecoderError`, HTTP 400) a missing reward, what :meth:`validate` refuses, and a prompt
        that with ``max_tokens`` overflows the model's context. ``fit_max_tokens`` (``max_tokens`` was not set
        by the user) lowers ``max_tokens`` to the room the rendered prompt leaves instead of refusing.
        """
        if request.prepared_by == self.name:
            return request
        if self.needs_reward() and rewards is None:
            raise DecoderError(f"decoder {self.name!r} needs a reward: set 'reward' to a declared reward", "reward")
        if self.single_answer and request.n > 1:
            raise DecoderError(f"{self.name} returns one answer; set n=1", "n")
        self.validate(request, engine.info)
        rendered = self.render(request, engine.tokenizer)
        limit = engine.info.max_model_len
        room = limit - len(rendered.prompt_token_ids) if limit else rendered.sampling.max_tokens
        max_tokens = rendered.sampling.max_tokens
        if fit_max_tokens and 1 <= room < max_tokens:
            max_tokens = room
        if max_tokens > room:
            read = "" if rendered.prompt_token_ids == request.prompt_token_ids else f" with {self.name}'s rendering"
            raise DecoderError(
                f"this model's maximum context length is {limit} tokens; the prompt{read} has "
                f"{len(rendered.prompt_token_ids)} tokens and max_tokens is {max_tokens}. "
                f"Lower max_tokens to at most {max(room, 0)} or shorten the prompt.",
                "prompt" if fit_max_tokens else "max_tokens",  # whichever the user chose
            )
        return replace(rendered, sampling=rendered.sampling.but(max_tokens=max_tokens), prepared_by=self.name)

    def needs_reward(self) -> bool:
        """Whether this decoder, with these parameters, needs the request to name a reward."""
        return self.requires_reward

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        """Refuse what this decoder cannot do for ``request`` on this engine (more answers than it draws, more
        top log-probs per step than the engine returns), with ``param``."""

    def worst_case(self, request: DecodeRequest) -> Cost | None:
        """The most engine tokens this decode can cost (generated + new prompt tokens, assuming the prefix cache
        serves shared prefixes), and the parameter to lower; ``None`` if unknown. The server refuses a request
        whose worst case is over its cap before any work starts, unless the decoder is :attr:`anytime` and the
        request sets a budget it will stop at."""
        return None

    def render(self, request: DecodeRequest, tokenizer: Tokenizer) -> DecodeRequest:
        """The request with the prompt the model reads; decoders that change the prompt (URIAL's prefix, DeAL's
        instruction) override this. The default is the request's own prompt."""
        return request

    # ---- decoding --------------------------------------------------------------------------------------------

    @abstractmethod
    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        """Produce ``request.n`` answers (call ``self.prepare`` first: it is a no-op on a prepared request)."""

    def decodes_together(self) -> bool:
        """Whether :meth:`decode_together` decodes the prompts of one request as one; if not (the default), each
        prompt is decoded alone, concurrently, with an equal share of the request's budget."""
        return False

    async def decode_together(
        self, requests: Sequence[DecodeRequest], contexts: Sequence[DecodeContext]
    ) -> list[DecodeResult]:
        """Decode the prompts of one request as one, sharing its budget (``contexts[i]`` meters ``requests[i]``);
        called only when :meth:`decodes_together` says so."""
        raise NotImplementedError(f"decoder {self.name!r} decodes each prompt alone")

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        """Yield :class:`StreamDelta` chunks of the answers, then the :class:`DecodeResult` last."""
        result = await self.decode(request, ctx)
        for i, choice in enumerate(result.choices):
            yield StreamDelta(
                index=i,
                text=choice.text,
                token_ids=choice.token_ids,
                logprobs=choice.logprobs,
                top_logprobs=choice.top_logprobs,
                finish_reason=choice.finish_reason,  # type: ignore[arg-type]
            )
        yield result

    @classmethod
    def collect_metrics(cls) -> Iterable[Any]:
        """Prometheus metric families this decoder publishes (read on every scrape of ``/metrics``)."""
        return ()


class StreamingDecoder(Decoder[P]):
    """A decoder written as a stream of committed tokens; ``decode`` runs the stream and returns its result."""

    streams_tokens = True

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        result = None
        async for event in self.stream(request, ctx):
            if isinstance(event, DecodeResult):
                result = event
        if result is None:
            raise RuntimeError(f"{type(self).__name__}.stream ended without a DecodeResult")
        return result

    @abstractmethod
    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        """Yield committed tokens as they are decided, then the :class:`DecodeResult`."""
        yield  # type: ignore[misc]


def _check(cls: type) -> None:
    caps_of(cls.Params)  # type: ignore[attr-defined]


DECODERS: Registry[type[Decoder]] = Registry("decoder", "alignd.decoders", Decoder, check=_check)


def register(name: str) -> Callable[[type[Decoder]], type[Decoder]]:
    """Class decorator that makes a decoder available under ``name``."""
    return DECODERS.register(name)


def decoder_registry() -> dict[str, type[Decoder]]:
    """Every registered decoder: built-ins plus the entry-point group ``alignd.decoders``."""
    return DECODERS.classes()


# ---- selection -----------------------------------------------------------------------------------------------


def check_top_k(k: int, engine: EngineInfo, param: str = "decoder.top_k") -> None:
    """Refuse a per-step top-k the engine cannot return (vLLM's ``max_logprobs``, 20 by default)."""
    if engine.max_logprobs and k > engine.max_logprobs:
        raise DecoderError(
            f"{param}={k} needs {k} log-probs per token, but this engine returns at most {engine.max_logprobs} "
            f"(vLLM's max_logprobs); lower {param} or raise the model's engine_args.max_logprobs",
            param,
        )


def all_dropped(reasons: Iterable[str]) -> RewardError:
    """The one error for "the rewards left no candidate to choose from" (HTTP 500, or 502 for a remote scorer)."""
    why = sorted(set(reasons)) or ["no reward"]
    return RewardError(f"every candidate was dropped: {'; '.join(why)}", reward="+".join(why))


def rank(candidates: Sequence[Candidate], key: Callable[[Candidate], Any] | None = None) -> list[Candidate]:
    """Scored candidates, best first by ``key`` (default: the reward); ties keep the lower index first. Answers
    invalid in the request's format are left out while any valid one is scored."""
    key = key or (lambda c: c.reward)
    scored = [c for c in candidates if c.dropped is None and c.reward is not None and key(c) is not None]
    valid = [c for c in scored if c.invalid is None]
    return sorted(valid or scored, key=key, reverse=True)  # reverse=True keeps equal items in their original order


def ranked_or_raise(
    candidates: Sequence[Candidate], n: int, key: Callable[[Candidate], Any] | None = None
) -> list[Candidate]:
    """The best ``n`` scored candidates; if the rewards dropped every one, :func:`all_dropped` says why."""
    ranked = rank(candidates, key)
    if not ranked:
        raise all_dropped(c.dropped for c in candidates if c.dropped)
    return ranked[:n]


def soft_pick(
    pool: Sequence[Candidate], n: int, temperature: float, seed: int | None, value: Callable[[Candidate], Any]
) -> list[Candidate]:
    """``n`` candidates drawn without replacement, each with probability proportional to exp(value / temperature)
    (soft best-of-N; temperature -> 0 is the argmax, -> infinity a uniform draw), seeded by the request's seed."""
    rng = random.Random(seed)
    left = sorted(pool, key=lambda c: c.index)
    chosen = []
    for _ in range(min(n, len(left))):
        pick = rng.choices(range(len(left)), softmax([value(c) for c in left], temperature))[0]
        chosen.append(left.pop(pick))
    return chosen


def softmax(values: Sequence[float | None], temperature: float) -> list[float]:
    """Selection weights proportional to exp(value / temperature); a missing or -inf value weighs nothing (all
    missing: uniform). Soft selections draw from these (``rng.choices(range(n), softmax(values, t))``).

    >>> [round(w, 3) for w in softmax([0.0, math.log(3)], 1.0)]
    [0.25, 0.75]
    >>> softmax([None, None], 1.0)
    [0.5, 0.5]
    """
    finite = [v for v in values if v is not None and v != -math.inf]
    if not finite:
        return [1.0 / len(values)] * len(values)
    top = max(finite)
    raw = [0.0 if v is None or v == -math.inf else math.exp((v - top) / temperature) for v in values]
    total = sum(raw)
    return [r / total for r in raw]
