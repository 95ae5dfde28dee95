"""The reward protocol, the reward registry, and the errors a scorer can raise.

A reward scores a batch: ``await reward.score(prompt, completions) -> list[float]``, one float per completion,
higher is better. A reward kind is a small class generic over its pydantic parameters (what the operator writes
in the configuration), ``class LengthReward(Reward[LengthParams])``, registered under a name with
:func:`register`; third-party kinds come from the entry-point group ``alignd.rewards`` (see
:mod:`alignd.registry` for the plug-in policy). Requests can only pick among rewards the operator declared, never
build new ones.

>>> from alignd.rewards import build_reward
>>> length = build_reward("short", {"type": "length", "unit": "words", "max": 5})
>>> import asyncio; asyncio.run(length.score("Say hi", ["hi there", "a b c d e f g h"]))
[0.0, -3.0]
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engines.protocol import ChatMessage, Engine
from ..registry import Registry, params_class
from ..validation import summary

Prompt = str | list[ChatMessage]
"""What a reward sees of the request: the prompt text, or the chat messages before the answer."""


class RewardError(RuntimeError):
    """A reward failed to score (raised, timed out or returned NaN). ``upstream`` marks a remote scorer (502)."""

    def __init__(self, message: str, *, reward: str, upstream: bool = False):
        super().__init__(message)
        self.reward = reward
        self.upstream = upstream


class RewardConfigError(ValueError):
    """The configuration of a reward is invalid; the message says which field to change."""


class RewardParams(BaseModel):
    """Fields every reward accepts in its configuration block, besides its own."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    type: str
    """The reward kind, one of ``GET /v1/rewards``' kinds (``judge``, ``classifier``, ``length``, ...)."""
    timeout_s: float = Field(30.0, gt=0, le=3600)
    """A score call slower than this fails with a timeout (or drops the batch, per ``on_error``)."""
    on_error: Literal["fail", "drop"] = "fail"
    """``fail``: a raise, timeout or NaN fails the request (502 for a remote scorer, else 500).
    ``drop``: the affected candidates get no reward and are excluded from selection, with the reason."""
    description: str = ""
    """Free text shown at ``GET /v1/rewards``."""
    normalize: Literal["none", "zscore", "cdf"] = "none"
    """Rescale each batch's scores: ``zscore`` (minus the batch mean, over its standard deviation) or ``cdf``
    (each score's empirical CDF among the other candidates, ties half: the calibration ``ctrl`` uses), so rewards
    of different scales can be summed."""


@dataclass(slots=True)
class RewardContext:
    """What a reward may use when it is built: the served engines, by model name."""

    engines: dict[str, Engine]
    default_model: str | None = None
    rewards: dict[str, Reward] = field(default_factory=dict)
    """Every reward declared so far, for kinds that combine others (``sum``)."""


P = TypeVar("P", bound=RewardParams)


class Reward(ABC, Generic[P]):
    """Base class of reward kinds: ``class JudgeReward(Reward[JudgeParams])`` sets ``Params`` from the type
    argument; :func:`register` sets ``kind``; subclasses implement :meth:`score`."""

    kind: ClassVar[str] = ""
    Params: ClassVar[type[RewardParams]] = RewardParams
    request_params: ClassVar[frozenset[str]] = frozenset()
    """Fields a request may override for one call (only for programmatic kinds: nothing is loaded)."""
    upstream: ClassVar[bool] = False
    """Whether this reward is a remote scorer (its failures are HTTP 502, not 500)."""

    params: P

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = params_class(cls, RewardParams)
        if params is not None:
            cls.Params = params

    def __init__(self, name: str, params: P, context: RewardContext | None = None):
        self.name = name
        self.params = params
        self.context = context if context is not None else RewardContext(engines={})

    @property
    def version(self) -> str:
        """Changes whenever scores could change; part of cache keys (CTRL's reference samples)."""
        digest = hashlib.sha256(self.params.model_dump_json().encode()).hexdigest()[:12]
        return f"{self.kind}:{digest}"

    async def start(self) -> None:
        """Load what the reward needs (models, HTTP pools); called once at server start-up."""

    def served(self, model: str | None) -> Engine:
        """The served model ``model`` (default: the server's default model) for kinds that run on one."""
        name = model or self.context.default_model
        engine = self.context.engines.get(name or "")
        if engine is None:
            raise RewardConfigError(
                f"reward {self.name!r}: model {name!r} is not served; set model to one of "
                f"{sorted(self.context.engines)}"
            )
        return engine

    async def close(self) -> None:
        """Release what :meth:`start` acquired."""

    @abstractmethod
    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        """Score every completion of ``prompt`` in one batched call; higher is better."""

    def with_overrides(self, overrides: dict[str, Any]) -> Reward:
        """A copy of this reward with request-level parameter overrides applied (validated, bounded)."""
        illegal = set(overrides) - self.request_params
        if illegal:
            allowed = ", ".join(sorted(self.request_params)) or "none"
            raise RewardConfigError(
                f"reward {self.name!r} does not accept {sorted(illegal)} from a request (allowed: {allowed})"
            )
        try:
            params = self.Params.model_validate({**self.params.model_dump(), **overrides})
        except ValidationError as exc:
            raise RewardConfigError(summary(exc, limit=1)) from None
        clone = type(self)(self.name, params, self.context)
        return clone

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.params.description,
            "request_params": sorted(self.request_params),
        }


REWARD_KINDS: Registry[type[Reward]] = Registry("reward kind", "alignd.rewards", Reward, attr="kind")


def register(kind: str) -> Callable[[type[Reward]], type[Reward]]:
    """Class decorator that makes a reward kind available to the configuration under ``kind``."""
    return REWARD_KINDS.register(kind)


def reward_kinds() -> dict[str, type[Reward]]:
    """Every registered reward kind, built-in and plug-in."""
    return REWARD_KINDS.classes()


def reward_params(name: str, config: dict[str, Any] | RewardParams) -> RewardParams:
    """A reward's configuration block (``{"type": kind, ...params}``) validated by its kind's parameters model, so
    its secrets are ``SecretStr`` from here on; an error names the reward and the field, never a value."""
    kinds = reward_kinds()
    kind = config.type if isinstance(config, RewardParams) else config.get("type")
    if kind not in kinds:
        raise RewardConfigError(
            f"reward {name!r}: unknown type {kind!r}; set type to one of {', '.join(sorted(kinds))}"
        )
    cls = kinds[kind]
    if isinstance(config, cls.Params):
        return config
    try:
        return cls.Params.model_validate(config if isinstance(config, dict) else config.model_dump())
    except ValidationError as exc:
        raise RewardConfigError(f"reward {name!r}: {summary(exc)}") from None


def build_reward(name: str, config: dict[str, Any] | RewardParams, context: RewardContext | None = None) -> Reward:
    """Build the reward ``name`` from its configuration block (or its already validated parameters)."""
    params = reward_params(name, config)
    return reward_kinds()[params.type](name, params, context)


def prompt_ids(engine: Engine, prompt: Prompt) -> list[int]:
    """``prompt`` as ``engine``'s model reads it: a text with its special tokens, messages through the chat
    template (for kinds that read the model's own log-probs of an answer after its prompt)."""
    tok = engine.tokenizer
    if isinstance(prompt, str):
        return tok.encode(prompt, add_special_tokens=True)
    return tok.encode(tok.apply_chat_template(prompt), add_special_tokens=False)


def prompt_text(prompt: Prompt) -> str:
    """The prompt as plain text: the string itself, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
