"""Server configuration: one pydantic-settings model, read from flags, ``ALIGND_*`` variables and a YAML file.

Precedence, highest first: command-line flags, environment variables (``ALIGND_PORT=8100``; nested fields with
``__``, e.g. ``ALIGND_LIMITS__MAX_TOKENS=512``), the YAML file given by ``--config`` (or ``ALIGND_CONFIG``),
then the defaults below. Every field's docstring is its ``--help`` text.

A minimal ``alignd.yaml``::

    models:
      smollm2: {path: smollm2-135m-instruct, engine_args: {dtype: bfloat16}}
    rewards:
      judge: {type: judge}
      short: {type: length, max: 80}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from ..decoders.protocol import DecoderParams, decoder_registry
from ..engines.models import DEFAULT_MODEL
from ..engines.registry import EngineOptions, engine_registry
from ..rewards.protocol import RewardConfigError, RewardParams, reward_params
from ..secrets import redact
from ..validation import summary


class ModelSettings(BaseModel):
    """One served model: a vLLM engine in this process, vLLM servers elsewhere, or another registered engine.

    A remote model::

        models:
          llama:
            engine: remote
            path: /models/Llama-3.1-8B-Instruct   # local copy of the tokenizer (weights not needed)
            engine_args: {urls: [http://gpu1:8000, http://gpu2:8000], timeout_s: 300}
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    path: str = DEFAULT_MODEL
    """A local model folder, or the preset name ``smollm2-135m-instruct`` (prepared by ``alignd prepare``). For a
    remote model, the folder only needs the tokenizer files: prompts are tokenized here."""
    engine: str = "vllm"
    """Engine adapter, by name: ``vllm`` runs vLLM's AsyncLLM in this process; ``remote`` fronts vLLM
    OpenAI-compatible servers; installed plug-ins add others (entry-point group ``alignd.engines``)."""
    engine_args: SerializeAsAny[EngineOptions] = Field(default_factory=EngineOptions)
    """The engine adapter's options: for ``vllm``, vLLM's ``AsyncEngineArgs`` (the common ones listed on the
    configuration page, any other passed through); for ``remote``, the servers and how to reach them."""
    tool_call_parser: str | None = "hermes"
    """vLLM's tool parser that reads the calls this model writes with ``tool_choice: auto`` (as vLLM's
    ``--tool-call-parser``: ``hermes``, ``llama3_json``, ``mistral``...); ``null`` refuses ``auto`` with a 400.
    Forced calls (``required``, a named function) need no parser. For a chat template that cannot render tools,
    alignd writes them into the system message in the Hermes format, so ``hermes`` reads them back."""

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, name: str | None) -> str | None:
        from ..structured import parser_names

        names = parser_names()
        if name is not None and names and name not in names:
            raise ValueError(f"tool_call_parser {name!r} is not one of vLLM's tool parsers: {', '.join(names)}")
        return name

    @model_validator(mode="before")
    @classmethod
    def _engine_options(cls, data: Any) -> Any:
        """``engine_args`` validated by the named engine's options model (secrets typed as secrets from here on).
        ``remote: {...}``, the spelling before engines were registered, is read as a remote engine's
        ``engine_args``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "remote" in data:
            if data.setdefault("engine", "remote") != "remote":
                raise ValueError(
                    f"'remote' is set but engine is {data['engine']!r}; set engine: remote to use the servers"
                )
            if data.get("engine_args"):
                raise ValueError("engine_args and remote both give the servers' options; keep engine_args only")
            data["engine_args"] = data.pop("remote")
        adapters = engine_registry()
        adapter = adapters.get(data.get("engine", "vllm"))
        if adapter is None:
            raise ValueError(
                f"engine {data.get('engine')!r} is not an engine adapter here; use one of {sorted(adapters)}"
            )
        try:
            data["engine_args"] = adapter.parse_options(data.get("engine_args"))
        except ValidationError as exc:
            raise ValueError(f"engine_args of engine {adapter.name!r}: {summary(exc)}") from None
        return data


class Limits(BaseModel):
    """Server caps; a request over any of them gets a 400 naming the field before any work starts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_n: int = Field(16, ge=1, le=1024)
    """Most answers (``n``) one request may ask for."""
    max_candidates: int = Field(64, ge=1, le=4096)
    """Most candidates a decoder may draw for one request (best-of-N's N)."""
    max_tokens: int = Field(4096, ge=1)
    """Most new tokens one request may ask for."""
    default_max_tokens: int = Field(256, ge=1)
    """max_tokens when a request gives none (never more than max_tokens, nor than the context the prompt
    leaves)."""
    max_logprobs: int = Field(20, ge=0)
    """Most top log-probs per token a request may ask for."""
    max_stop: int = Field(8, ge=0)
    """Most stop strings per request."""
    max_stop_chars: int = Field(256, ge=1)
    """Longest stop string."""
    max_logit_bias: int = Field(300, ge=0)
    """Most logit_bias entries per request."""
    max_engine_tokens_per_request: int = Field(1_000_000, ge=1)
    """Most engine tokens (generated + prompt tokens not from the prefix cache) one request may cost in the
    worst case its parameters allow; over it, a 400 names the parameter to lower, unless the decoder can stop
    early and the request sets a ``budget`` it stops at."""
    max_reward_terms: int = Field(8, ge=1, le=64)
    """Most rewards one request may combine (each scores every candidate once)."""
    max_concurrent_requests: int = Field(64, ge=1)
    """Generation requests served at once; more get 429 with Retry-After before any work starts."""
    request_timeout_s: float = Field(600.0, gt=0)
    """Deadline of one request; past it the request ends with 504 and its engine work is aborted."""
    max_body_bytes: int = Field(4 << 20, ge=1024)
    """Largest request body accepted."""


DEFAULT_REWARDS: dict[str, dict[str, Any]] = {
    "judge": {"type": "judge", "description": "The served model judges helpfulness (log-odds of Yes)."},
    "length": {"type": "length", "unit": "words", "description": "Answer length in words."},
    "self_certainty": {
        "type": "self_certainty",
        "description": "How sure the served model is of the answer (mean KL from uniform of its next-token law).",
    },
    "keywords": {"type": "keywords", "description": "Fraction of the request's keywords present."},
    "sentiment": {"type": "sentiment", "description": "VADER compound sentiment in [-1, 1]."},
    "relevance": {
        "type": "embedding",
        "description": "Cosine similarity (all-MiniLM-L6-v2) to the prompt, or to the request's `references`.",
    },
    "json": {
        "type": "json_schema",
        "description": "1 if the answer is JSON valid under the request's `json_schema`, 0.5 if only JSON, else 0.",
    },
    "no_refusal": {
        "type": "regex",
        "pattern": r"(?i)\b(sorry|I apologi[sz]e|I can(?:no|')t (?:help|assist)|as an AI)\b",
        "mode": "must_not_match",
        "description": "1 unless the answer apologises or refuses (a regular expression).",
    },
    "judge_concise": {
        "type": "sum",
        "components": {"judge": 1.0, "length": -0.02},
        "description": "The judge, minus 0.02 per word: helpful and short.",
    },
}
"""What ``alignd serve`` declares when the configuration names no rewards: every reward kind that runs offline
on the default model with nothing to configure."""


class Settings(BaseSettings):
    """Everything ``alignd serve`` can be told."""

    model_config = SettingsConfigDict(
        env_prefix="ALIGND_",
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
        nested_model_default_partial_update=True,
    )

    config: Path | None = None
    """YAML configuration file (values there sit below environment variables and flags)."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback unless you mean to expose the server."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""
    home: Path = Field(default_factory=lambda: Path(os.environ.get("ALIGND_HOME", "~/.cache/alignd")).expanduser())
    """Cache directory for prepared models and other state (``$ALIGND_HOME``)."""
    models: dict[str, ModelSettings] = Field(default_factory=lambda: {DEFAULT_MODEL: ModelSettings()})
    """Served models by the name clients use in ``model``."""
    default_model: str | None = None
    """Model used when a request names none (default: the first in ``models``)."""
    rewards: dict[str, SerializeAsAny[RewardParams]] = Field(
        default_factory=lambda: dict(DEFAULT_REWARDS), validate_default=True
    )
    """Declared rewards by name; each is ``{type: kind, ...params}`` (see GET /v1/rewards for kinds). The default
    declares one of every kind that runs offline with nothing to configure; models load on first use."""
    default_reward: str | None = None
    """Reward used by decoders that need one when a request names none (default: none, a 400 asks for one)."""
    decoder_options: dict[str, SerializeAsAny[DecoderParams]] = Field(default_factory=dict)
    """Operator-only options per decoder, e.g. ``{urial: {prompt_file: /etc/alignd/urial.md}}``."""
    limits: Limits = Field(default_factory=Limits)
    """Per-request caps and concurrency."""
    api_keys: list[SecretStr] = Field(default_factory=list)
    """Bearer keys accepted on every route but /health and /metrics; empty: no authentication."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS; empty: CORS off. Credentials are never allowed with ``*``."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""
    log_prompt_chars: int = Field(64, ge=0)
    """Prompt text in logs is cut to this many characters (0: never logged)."""
    playground: bool = True
    """Serve the playground page at /playground (/ redirects there); ``false`` removes both."""
    shutdown_grace_s: float = Field(30.0, ge=0)
    """On SIGTERM, in-flight requests get this long to finish; new ones get 503."""
    otlp_traces_endpoint: str | None = None
    """Send OpenTelemetry traces of every generation request (its decodes, each decoder round or step, every engine
    and reward call) to this OTLP collector, e.g. ``http://127.0.0.1:4318/v1/traces`` (vLLM's
    ``--otlp-traces-endpoint``); unset: no tracing at all. A client's ``traceparent`` is honoured and passed on to
    remote engines and scorers."""
    otlp_traces_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    """How spans travel to ``otlp_traces_endpoint`` (collectors listen on 4318 for HTTP, 4317 for gRPC); headers
    such as a collector's token come from ``OTEL_EXPORTER_OTLP_TRACES_HEADERS``."""

    @field_validator("rewards", mode="before")
    @classmethod
    def _reward_blocks(cls, rewards: Any) -> Any:
        """Each reward block validated by its kind's parameters, so its secrets are typed from here on."""
        if not isinstance(rewards, dict):
            return rewards
        try:
            return {name: reward_params(name, block) for name, block in rewards.items()}
        except RewardConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("decoder_options", mode="before")
    @classmethod
    def _decoder_options(cls, options: Any) -> Any:
        """Each decoder's operator options validated by its options model (a typo fails the server at start)."""
        if not isinstance(options, dict):
            return options
        registry = decoder_registry()
        out = {}
        for name, raw in options.items():
            if name not in registry:
                raise ValueError(f"decoder_options names {name!r}, which is not a decoder: {sorted(registry)}")
            if isinstance(raw, registry[name].Options):
                out[name] = raw
                continue
            try:
                out[name] = registry[name].Options.model_validate(raw)
            except ValidationError as exc:
                raise ValueError(f"decoder_options.{name}: {summary(exc)}") from None
        return out

    @field_validator("models")
    @classmethod
    def _some_model(cls, models: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        if not models:
            raise ValueError("at least one model must be configured under 'models'")
        return models

    @model_validator(mode="after")
    def _defaults_exist(self) -> Settings:
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of models: {sorted(self.models)}")
        if self.default_reward is not None and self.default_reward not in self.rewards:
            raise ValueError(f"default_reward {self.default_reward!r} is not one of rewards: {sorted(self.rewards)}")
        return self

    @property
    def default_model_name(self) -> str:
        return self.default_model or next(iter(self.models))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags arrive as init kwargs. The YAML file comes from a flag or ALIGND_CONFIG, so find it first.
        init = init_settings.init_kwargs if hasattr(init_settings, "init_kwargs") else {}
        path = init.get("config") or os.environ.get("ALIGND_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path:
            if not Path(path).is_file():
                raise FileNotFoundError(f"configuration file {path} does not exist")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for logs: typed secrets dump as ``**********``, and
        :func:`~alignd.secrets.redact` masks what arrives untyped (URL passwords, secret-named keys of free-form
        mappings)."""
        return redact(self.model_dump(mode="json"))
