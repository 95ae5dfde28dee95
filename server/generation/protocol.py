"""What every generation endpoint shares: the request's sampling settings, decoder and reward selection, and the
``alignment`` object its response carries.

A request converts itself, once, into a :class:`GenerationPlan` (:meth:`SamplingFields.plan`): the
engine-neutral :class:`~alignd.engines.protocol.SamplingConfig`, the decoder and reward selection, all checked
against the server's :class:`~alignd.server.settings.Limits`. Every endpoint refuses the same things the same
way, with ``param`` naming the offending field, before any work starts; the serving layer only resolves names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...decoders import Budget, Candidate
from ...engines.protocol import SamplingConfig
from ...structured import AnswerFormat
from ..errors import BadRequest
from ..settings import Limits
from .formats import ResponseFormat, StructuredOutputs, answer_format
from .strict import StrictModel


class DecoderSpec(StrictModel):
    """``{"name": "best_of_n", "num_candidates": 8}``: a decoder name and its parameters, flat."""

    model_config = ConfigDict(allow_inf_nan=False, extra="allow")

    name: str = Field(..., max_length=64)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BudgetSpec(StrictModel):
    """What one request may spend. Decoders that support it (``supports.budget`` in ``GET /v1/decoders``) stop at
    the best answer found so far when it runs out and say so in ``alignment.info.budget_exhausted``; others are
    refused if their worst case is over it."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    max_engine_tokens: int | None = Field(None, ge=1)
    """Engine tokens: generated tokens plus prompt tokens not read from the prefix cache, rewards' engine work
    (a judge) included."""
    max_seconds: float | None = Field(None, gt=0)
    """Wall-clock seconds; a decoder that cannot stop early gets this as its deadline (504 past it)."""


class RewardSpec(StrictModel):
    """One declared reward, its weight, and (for programmatic rewards) per-request parameters."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    name: str = Field(..., max_length=64)
    weight: float = Field(1.0, ge=-1000, le=1000)
    params: dict[str, Any] = Field(default_factory=dict)


Stop = Annotated[str | list[str] | None, Field(None)]


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """A generation request in internal terms, checked against the server's limits."""

    model: str | None
    decoder: str
    decoder_params: dict[str, Any]
    rewards: tuple[RewardSpec, ...]
    sampling: SamplingConfig
    """The sampling settings; ``max_tokens`` is the request's, or the server's default when it gave none."""
    max_tokens_given: bool
    """Whether the request set ``max_tokens`` (if not, it is lowered to fit the context instead of refused)."""
    n: int
    prompt_logprobs: int | None = None
    """``echo`` with ``logprobs``: top-k log-probs of every prompt token, returned before the answer's."""
    echo: bool = False
    budget: Budget = Budget()
    answer_format: AnswerFormat | None = None
    """The shape answers must have (structured output, tool calls); its constraint is in ``sampling``."""
    format_param: str = "response_format"
    """The field that asked for the shape, which a refusal about it names."""

    def check_vocab(self, vocab_size: int) -> None:
        """Refuse token ids (``logit_bias``, ``stop_token_ids``) the model does not have."""
        if any(not 0 <= t < vocab_size for t, _ in self.sampling.logit_bias):
            raise BadRequest(f"logit_bias token ids must be in [0, {vocab_size})", param="logit_bias")
        if any(not 0 <= t < vocab_size for t in self.sampling.stop_token_ids):
            raise BadRequest(f"stop_token_ids must be in [0, {vocab_size})", param="stop_token_ids")


class SamplingFields(StrictModel):
    """OpenAI sampling fields plus vLLM's common extras, with OpenAI's bounds."""

    model: str | None = None
    """A served model; default: the server's default model."""
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: Stop = None
    stop_token_ids: list[int] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    user: str | None = Field(None, max_length=256)

    decoder: str | DecoderSpec = "sample"
    """Which decoder answers, by name or ``{"name": ..., **params}``."""
    reward: str | RewardSpec | list[RewardSpec] | None = None
    """A declared reward, or a weighted list of them."""
    return_candidates: bool = False
    """Also return every candidate the decoder scored (``alignment.candidates``)."""
    budget: BudgetSpec | None = None
    """What this request may spend (engine tokens, seconds); see :class:`BudgetSpec`."""
    response_format: ResponseFormat | None = None
    """OpenAI's ``response_format``: ``json_object`` or ``json_schema`` constrain every candidate's tokens."""
    structured_outputs: StructuredOutputs | None = None
    """vLLM's structured outputs: one of ``json``, ``regex``, ``choice``, ``grammar``, ``json_object``."""

    @field_validator("logit_bias")
    @classmethod
    def _bias_values(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias is None:
            return None
        for key, value in bias.items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError("logit_bias values must be between -100 and 100")
        return bias

    @model_validator(mode="after")
    def _min_le_max(self) -> SamplingFields:
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must not exceed max_tokens")
        return self

    # ---- conversion ------------------------------------------------------------------------------------------

    @property
    def decoder_name(self) -> str:
        """The decoder's name as given (for metrics labels of requests refused before resolution)."""
        return self.decoder if isinstance(self.decoder, str) else self.decoder.name

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_logprobs(self) -> int | None:
        """Top log-probs per token the response must carry (endpoint-specific)."""
        return None

    def requested_prompt_logprobs(self) -> int | None:
        """Top log-probs per prompt token the response must carry (``echo`` with ``logprobs``)."""
        return None

    def echoes(self) -> bool:
        """Whether answers are returned after their prompt (``echo``)."""
        return False

    logprobs_param: ClassVar[str] = "logprobs"

    def refuse_unsupported(self) -> None:
        """Refuse (400 or 501, naming the field) what this endpoint's schema accepts but alignd does not serve;
        endpoints with such fields override it."""

    def answer_format(self) -> tuple[AnswerFormat | None, str]:
        """The shape the answers must have, and the field a refusal about it names (endpoints with tools add
        them)."""
        return answer_format(self.response_format, self.structured_outputs)

    def plan(self, limits: Limits) -> GenerationPlan:
        """This request in internal terms, refused (400, naming the field) where its endpoint does not serve a
        field or it is over the server's caps."""
        self.refuse_unsupported()
        self._check_limits(limits)
        fmt, format_param = self.answer_format()
        max_tokens = self.max_tokens
        if max_tokens is None:  # never more than the cap: a request must not bypass it by leaving the field out
            max_tokens = min(limits.default_max_tokens, limits.max_tokens)
        return GenerationPlan(
            model=self.model,
            decoder=self.decoder if isinstance(self.decoder, str) else self.decoder.name,
            decoder_params={} if isinstance(self.decoder, str) else self.decoder.params,
            rewards=tuple(self._reward_specs(limits)),
            sampling=self._sampling(max_tokens).but(constraint=fmt.constraint() if fmt else None),
            max_tokens_given=self.max_tokens is not None,
            n=self.n,
            prompt_logprobs=self.requested_prompt_logprobs(),
            echo=self.echoes(),
            budget=Budget(self.budget.max_engine_tokens, self.budget.max_seconds) if self.budget else Budget(),
            answer_format=fmt,
            format_param=format_param,
        )

    def _check_limits(self, limits: Limits) -> None:
        if self.max_tokens == 0 and not self.echoes():
            raise BadRequest(
                "max_tokens=0 generates nothing: it needs echo=true (to score the prompt)", param="max_tokens"
            )
        if self.n > limits.max_n:
            raise BadRequest(f"n={self.n} is over this server's limit of {limits.max_n}", param="n")
        if self.max_tokens is not None and self.max_tokens > limits.max_tokens:
            raise BadRequest(
                f"max_tokens={self.max_tokens} is over this server's limit of {limits.max_tokens}", param="max_tokens"
            )
        stops = self.stop_list()
        if len(stops) > limits.max_stop:
            raise BadRequest(f"at most {limits.max_stop} stop sequences are allowed", param="stop")
        if any(len(s) > limits.max_stop_chars or not s for s in stops):
            raise BadRequest(f"stop sequences must be 1 to {limits.max_stop_chars} characters", param="stop")
        if self.stop_token_ids and len(self.stop_token_ids) > limits.max_stop:
            raise BadRequest(f"at most {limits.max_stop} stop_token_ids are allowed", param="stop_token_ids")
        if self.logit_bias and len(self.logit_bias) > limits.max_logit_bias:
            raise BadRequest(f"at most {limits.max_logit_bias} logit_bias entries are allowed", param="logit_bias")
        cap = limits.max_engine_tokens_per_request
        if self.budget and self.budget.max_engine_tokens and self.budget.max_engine_tokens > cap:
            raise BadRequest(
                f"budget.max_engine_tokens={self.budget.max_engine_tokens} is over this server's limit of {cap}",
                param="budget.max_engine_tokens",
            )
        logprobs = self.requested_logprobs()
        if logprobs is not None and logprobs > limits.max_logprobs:
            raise BadRequest(
                f"at most {limits.max_logprobs} log-probs per token are allowed", param=self.logprobs_param
            )

    def _reward_specs(self, limits: Limits) -> list[RewardSpec]:
        """The reward terms: at most ``limits.max_reward_terms``, each reward at most once (its weight says how
        much it counts; listing it again would only score every candidate again)."""
        if self.reward is None:
            return []
        if isinstance(self.reward, str):
            return [RewardSpec(name=self.reward)]
        if isinstance(self.reward, RewardSpec):
            return [self.reward]
        specs = list(self.reward)
        if len(specs) > limits.max_reward_terms:
            raise BadRequest(
                f"at most {limits.max_reward_terms} reward terms are allowed; {len(specs)} were given", param="reward"
            )
        seen: set[str] = set()
        for i, spec in enumerate(specs):
            if spec.name in seen:
                raise BadRequest(
                    f"reward {spec.name!r} is listed twice; list each reward once with the weight it should have",
                    param=f"reward.{i}.name",
                )
            seen.add(spec.name)
        return specs

    def _sampling(self, max_tokens: int) -> SamplingConfig:
        return SamplingConfig(
            n=1,
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=0 if self.top_k in (None, -1) else self.top_k,
            min_p=self.min_p or 0.0,
            seed=self.seed,
            stop=tuple(self.stop_list()),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=tuple((int(k), v) for k, v in (self.logit_bias or {}).items()),
            logprobs=self.requested_logprobs(),
            skip_special_tokens=self.skip_special_tokens,
        )


# ---- responses: what every endpoint family adds to its answer --------------------------------------------------


class Scores(BaseModel):
    reward: float | None = None
    """The request's combined reward (the weighted sum of its rewards); ``null`` when unscored or dropped."""
    rewards: dict[str, float | None] = Field(default_factory=dict)
    """Each reward's raw score."""
    calibrated_reward: float | None = None
    """``ctrl``: the win rate against the model's own samples, in [0, 1]."""
    score: float | None = None
    """The decoder's own ranking score where it has one (beam log-prob, search value)."""
    invalid: str | None = None
    """Why the answer is not valid in the requested shape (JSON off its schema, a tool call its function's schema
    refuses); such an answer is returned only when no valid candidate was drawn."""


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
            invalid=c.invalid,
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
