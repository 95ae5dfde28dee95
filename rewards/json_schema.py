"""``json_schema``: whether the answer is JSON valid under a JSON Schema."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import Field, field_validator

from .protocol import Prompt, Reward, RewardParams, register


class JSONSchemaParams(RewardParams):
    json_schema: dict[str, Any] = Field(default_factory=dict)
    """A JSON Schema the answer must satisfy; ``{}`` accepts any JSON value."""
    extract: bool = True
    """Also accept JSON inside a fenced code block or surrounded by text (the outermost {...} or [...])."""

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import validators

        try:
            validators.validator_for(schema).check_schema(schema)
        except Exception as exc:
            raise ValueError(f"not a valid JSON Schema: {str(exc).splitlines()[0]}") from None
        return schema


@register("json_schema")
class JSONSchemaReward(Reward[JSONSchemaParams]):
    """1.0 if the answer is JSON that validates against ``json_schema``, 0.5 if it parses but does not
    validate, 0.0 if it does not parse.

    >>> import asyncio
    >>> r = JSONSchemaReward("j", JSONSchemaParams(type="json_schema", json_schema={"type": "object",
    ...     "required": ["name"]}), None)
    >>> asyncio.run(r.score("", ['{"name": "x"}', '{"age": 3}', 'not json', 'Sure: ```json\\n{"name": 1}\\n```']))
    [1.0, 0.5, 0.0, 1.0]
    """

    request_params = frozenset({"json_schema"})

    def _parse(self, text: str) -> tuple[bool, Any]:
        p = self.params
        candidates = [text.strip()]
        if p.extract:
            for open_, close in (("{", "}"), ("[", "]")):
                start, end = text.find(open_), text.rfind(close)
                if 0 <= start < end:
                    candidates.append(text[start : end + 1])
        for candidate in candidates:
            try:
                return True, json.loads(candidate)
            except ValueError:
                continue
        return False, None

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        from jsonschema import validators

        p = self.params
        validator = validators.validator_for(p.json_schema)(p.json_schema)
        scores = []
        for text in completions:
            ok, value = self._parse(text)
            scores.append(0.0 if not ok else (1.0 if validator.is_valid(value) else 0.5))
        return scores
