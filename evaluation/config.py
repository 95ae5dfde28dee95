"""What an evaluation runs: a prompt set (JSONL) and a YAML naming the decoder configurations to compare.

A minimal ``eval.yaml``::

    prompts: prompts.jsonl            # relative to this file
    request: {max_tokens: 48, seed: 0}
    reward: judge                     # what the decoders optimise (the API's ``reward``)
    eval_rewards: [sentiment]         # held out: scored after the fact, never seen by a decoder
    configs:
      - {name: sample, decoder: sample}
      - name: best_of_n
        decoder: best_of_n
        sweep: {num_candidates: [1, 4, 16]}

A prompt line is ``{"id": "q1", "prompt": "..."}`` or ``{"messages": [...]}``, optionally with ``keywords`` (given to
rewards of kind ``keywords``), ``references`` (to rewards of kind ``embedding``), ``reward_params`` (per reward
name, anything else), ``answer`` (a reference final answer: accuracy is reported) and ``tags``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class EvalInputError(ValueError):
    """The evaluation's input is wrong; the message says where (file, line, field) and what to change."""


class RewardRef(BaseModel):
    """A declared reward of the server, its weight, and fixed per-request parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)


def _reward_list(value: Any) -> list[RewardRef]:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    return [RewardRef(name=v) if isinstance(v, str) else RewardRef.model_validate(v) for v in value]


class DecoderConfig(BaseModel):
    """One row of the comparison: a decoder (the API's ``decoder`` object), request overrides, and an optional
    sweep that expands it into one row per value."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=80)
    decoder: str | dict[str, Any] = "sample"
    request: dict[str, Any] = Field(default_factory=dict)
    """Request fields for this row only (``temperature``, ``n``, ``max_tokens``...), over the eval's ``request``."""
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    """Decoder parameters to sweep; several keys sweep their cartesian product."""
    together: int = Field(1, ge=1, le=256)
    """Prompts per request: above 1, that many prompts go in one ``/v1/align`` request under one budget, which a
    decoder that shares it (``best_of_n`` with ``allocate``) spends where samples gain most; each prompt's record
    then carries the engine tokens its own candidates took. The optimised reward must then be the same for every
    prompt (no per-prompt parameters)."""

    def expand(self) -> list[Run]:
        base = {"name": self.decoder} if isinstance(self.decoder, str) else dict(self.decoder)
        if "name" not in base:
            raise EvalInputError(f"configuration {self.name!r}: decoder needs a 'name'")
        if not self.sweep:
            return [Run(label=self.name, family=self.name, decoder=base, request=self.request, together=self.together)]
        keys = sorted(self.sweep)
        runs = []
        for values in itertools.product(*(self.sweep[k] for k in keys)):
            params = dict(zip(keys, values))
            label = f"{self.name} " + " ".join(f"{k}={v}" for k, v in params.items())
            runs.append(
                Run(
                    label=label,
                    family=self.name,
                    decoder={**base, **params},
                    request=self.request,
                    sweep=params,
                    together=self.together,
                )
            )
        return runs


class Run(BaseModel):
    """One expanded configuration: what a row of the report measures."""

    label: str
    family: str
    decoder: dict[str, Any]
    request: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, Any] = Field(default_factory=dict)
    together: int = 1

    @property
    def decoder_name(self) -> str:
        return str(self.decoder["name"])


class EvalConfig(BaseModel):
    """An evaluation: prompts, the optimised and held-out rewards, and the configurations to compare."""

    model_config = ConfigDict(extra="forbid")

    prompts: Path
    """The JSONL prompt set (relative paths are relative to the YAML file)."""
    model: str | None = None
    """The served model to evaluate; default: the server's default model."""
    format: Literal["chat", "completion"] = "chat"
    """``chat``: a ``prompt`` is sent as one user message to /v1/chat/completions; ``completion``: as raw text."""
    request: dict[str, Any] = Field(default_factory=lambda: {"max_tokens": 48, "seed": 0})
    """Request fields every configuration starts from (``max_tokens``, ``seed``, ``temperature``...)."""
    reward: list[RewardRef] = Field(default_factory=list)
    """The reward the decoders optimise (the API's ``reward``)."""
    eval_rewards: list[RewardRef] = Field(default_factory=list)
    """Held-out rewards: scored on every chosen answer after the fact, never shown to a decoder."""
    baseline: dict[str, Any] = Field(default_factory=lambda: {"temperature": 1.0})
    """The model's own answer that win rates compare against: a fresh ``sample`` with these request fields."""
    kl_references: int = Field(0, ge=0, le=256)
    """K reference samples of the model per prompt (temperature 1, scored by the optimised reward): best-of-N's
    empirical KL estimate and every configuration's calibrated reward (0: neither; best-of-N keeps its bound)."""
    concurrency: int = Field(2, ge=1, le=64)
    """Requests in flight at once."""
    tags: list[str] = Field(default_factory=list)
    """Evaluate only the prompts carrying one of these tags (all prompts when empty)."""
    skip: int = Field(0, ge=0)
    """Leave out the first ``skip`` prompts (after the tag filter): settings chosen on the first N prompts are
    checked on the rest with ``skip: N``."""
    limit: int | None = Field(None, ge=1)
    """Evaluate only the first ``limit`` prompts (after the tag filter and ``skip``)."""
    configs: list[DecoderConfig] = Field(..., min_length=1)

    @field_validator("reward", "eval_rewards", mode="before")
    @classmethod
    def _rewards(cls, value: Any) -> list[RewardRef]:
        return _reward_list(value)

    @model_validator(mode="after")
    def _unique_labels(self) -> EvalConfig:
        labels = [run.label for run in self.runs()]
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        if dupes:
            raise ValueError(f"configuration names must be unique; repeated: {dupes}")
        return self

    def runs(self) -> list[Run]:
        return [run for config in self.configs for run in config.expand()]

    def prompt_set(self) -> list[PromptRecord]:
        """The prompts this evaluation runs on: the file's, filtered by ``tags``, past ``skip``, up to ``limit``."""
        return load_prompts(self.prompts, self.limit, self.tags, self.skip)


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """Read ``path`` (YAML) with ``overrides`` applied; the prompt file's path is made absolute."""
    if not path.is_file():
        raise EvalInputError(f"the evaluation file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EvalInputError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise EvalInputError(f"{path} must hold a mapping (prompts, reward, configs...)")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        config = EvalConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the file"
        raise EvalInputError(f"{path}: {where}: {_msg(err)}") from None
    if not config.prompts.is_absolute():
        config.prompts = (path.parent / config.prompts).resolve()
    return config


class PromptRecord(BaseModel):
    """One line of the prompt set."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str | None = Field(None, min_length=1)
    messages: list[dict[str, Any]] | None = Field(None, min_length=1)
    keywords: list[str] | None = None
    references: list[str] | None = None
    reward_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    answer: str | None = None
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_prompt(self) -> PromptRecord:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self

    def params_for(self, name: str, kind: str) -> dict[str, Any]:
        """Per-prompt parameters for the reward ``name`` of kind ``kind``."""
        out: dict[str, Any] = {}
        if kind == "keywords" and self.keywords is not None:
            out["keywords"] = self.keywords
        if kind == "embedding" and self.references is not None:
            out["references"] = self.references
        out.update(self.reward_params.get(name, {}))
        return out


def load_prompts(
    path: Path, limit: int | None = None, tags: list[str] | None = None, skip: int = 0
) -> list[PromptRecord]:
    """The prompt set (those with one of ``tags``, if given, past the first ``skip``, up to ``limit``); a malformed
    line is an :class:`EvalInputError` naming the file and line number, wherever it is."""
    if not path.is_file():
        raise EvalInputError(f"the prompt file {path} does not exist")
    records: list[PromptRecord] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise EvalInputError(f"{path}:{number}: each line must be a JSON object")
        data.setdefault("id", f"line-{number}")
        data["id"] = str(data["id"])
        try:
            record = PromptRecord.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise EvalInputError(f"{path}:{number}: {where + ': ' if where else ''}{_msg(err)}") from None
        if record.id in seen:
            raise EvalInputError(f"{path}:{number}: id {record.id!r} appears twice")
        seen.add(record.id)
        if tags and not set(tags) & set(record.tags):
            continue
        records.append(record)
    chosen = records[skip:][:limit]
    if not chosen:
        tagged = f" tagged {tags}" if tags else ""
        raise EvalInputError(f"{path} holds no prompts{tagged}" + (f" past the first {skip}" if records else ""))
    return chosen


def _msg(err: Any) -> str:
    return str(err["msg"]).removeprefix("Value error, ")
