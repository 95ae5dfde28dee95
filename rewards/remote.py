"""``remote``: a reward served elsewhere, over HTTP, with pooled connections, a timeout and retries.

Two request/response contracts:

* ``alignd`` (default), for any JSON scorer: ``POST url`` with ``{"prompt": <text or messages>,
  "completions": [<text>, ...]}``; the answer is ``{"scores": [<float>, ...]}``, one per completion.
* ``vllm_classify``, a vLLM server running a sequence-classification model (``--runner pooling``):
  ``POST <base>/classify`` with ``{"model": ..., "input": ["<prompt>\n<completion>", ...], "use_activation":
  false}``; the reward is ``activation(data[i].probs)[label]``.
* ``vllm_pooling``: the same server's ``POST <base>/pooling`` with ``"task": "classify"``; the reward is
  ``activation(data[i].data)[label]``.

Connection errors, timeouts and 5xx answers are retried with exponential backoff; 4xx answers are not (the
request is wrong, a retry would not help). A failure after the retries is a :class:`RewardError` marked
``upstream``, which the server reports as 502.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from ..tracing import inject
from .classifier import activate
from .protocol import Prompt, Reward, RewardError, RewardParams, prompt_text, register


class RemoteParams(RewardParams):
    url: str = Field(..., max_length=2000)
    """The scorer's URL (``alignd``) or the vLLM server's base URL (``vllm_classify``)."""
    format: Literal["alignd", "vllm_classify", "vllm_pooling"] = "alignd"
    """The request/response contract (see the module documentation)."""
    model: str | None = None
    """``vllm_classify``: the served model name."""
    label: int = Field(0, ge=0)
    """``vllm_classify``: which class is the reward."""
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    """``vllm_classify``: the server returns raw logits (``use_activation: false``); this is applied here, as
    ``classifier`` does."""
    retries: int = Field(2, ge=0, le=10)
    """Retries after a connection error, timeout or 5xx answer."""
    backoff_s: float = Field(0.2, ge=0.0, le=60.0)
    """First retry delay; doubles at each retry."""
    api_key: SecretStr | None = None
    """Sent as ``Authorization: Bearer``; never logged."""
    max_connections: int = Field(16, ge=1, le=1024)
    """Connection pool size."""


@register("remote")
class RemoteReward(Reward[RemoteParams]):
    """A reward computed by another service over HTTP; every batch is one request."""

    upstream = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._client: httpx.AsyncClient | None = None

    def _make_client(self) -> httpx.AsyncClient:
        p = self.params
        headers = {"Authorization": f"Bearer {p.api_key.get_secret_value()}"} if p.api_key else {}
        limits = httpx.Limits(max_connections=p.max_connections, max_keepalive_connections=p.max_connections)
        # timeout_s bounds the whole score call (RewardSet enforces it), so each attempt gets its share.
        return httpx.AsyncClient(headers=headers, limits=limits, timeout=p.timeout_s / (p.retries + 1))

    async def start(self) -> None:
        if self._client is None:
            self._client = self._make_client()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _request(self, prompt: Prompt, completions: Sequence[str]) -> tuple[str, dict[str, Any]]:
        p = self.params
        if p.format in ("vllm_classify", "vllm_pooling"):
            question = prompt_text(prompt)
            body = {
                "model": p.model,
                "input": [f"{question}\n{c}" for c in completions],
                "use_activation": False,
            }
            if p.format == "vllm_pooling":
                body["task"] = "classify"
            return p.url.rstrip("/") + ("/classify" if p.format == "vllm_classify" else "/pooling"), body
        return p.url, {"prompt": prompt, "completions": list(completions)}

    def _parse(self, data: Any, n: int) -> list[float]:
        p = self.params
        if p.format == "vllm_classify":
            return [activate([float(x) for x in item["probs"]], p.activation)[p.label] for item in data["data"]]
        if p.format == "vllm_pooling":
            return [activate([float(x) for x in item["data"]], p.activation)[p.label] for item in data["data"]]
        scores = data["scores"]
        if not isinstance(scores, list):
            raise TypeError("'scores' is not a list")
        return [float(s) for s in scores]

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        p = self.params
        if self._client is None:
            await self.start()
        assert self._client is not None
        url, body = self._request(prompt, completions)
        delay = p.backoff_s
        last = "no attempt"
        for attempt in range(p.retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                response = await self._client.post(url, json=body, headers=inject())
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = type(exc).__name__
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise RewardError(
                    f"reward {self.name!r}: the scorer refused the request (HTTP {response.status_code})",
                    reward=self.name,
                    upstream=True,
                )
            try:
                return self._parse(response.json(), len(completions))
            except (ValueError, KeyError, TypeError, IndexError):
                raise RewardError(
                    f"reward {self.name!r}: the scorer's answer does not follow the {p.format!r} contract",
                    reward=self.name,
                    upstream=True,
                ) from None
        raise RewardError(
            f"reward {self.name!r}: the scorer failed after {p.retries + 1} attempts ({last})",
            reward=self.name,
            upstream=True,
        )
