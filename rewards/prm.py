"""``prm``: a process reward model scores every step of an answer; the reward aggregates the step scores.

A step is the text up to a separator (``step_separator``, a blank line by default). The answer is rendered as the
model was trained to read it (with its chat template when it has one): the question, then every step followed by
``step_tag`` (Qwen2.5-Math-PRM's ``<extra_0>``, Math-Shepherd's ``ки``...). The model's output at each tag is read
as that step's score: ``activation(logits)[label]`` (softmax over {bad, good}, label 1, for Qwen-style PRMs).

Backends, all reading the same positions of the same tokens:

* ``transformers``: in process; ``*ForTokenClassification`` models, and ``*ForProcessRewardModel`` checkpoints
  (a causal backbone with Qwen's two-layer score head) built from the backbone and the head's weights;
* ``vllm``: vLLM's pooling runner in process (``token_classify`` on every token), for speed on a GPU host;
* ``remote``: a vLLM pooling server's ``/pooling`` endpoint (``task: token_classify``);
* ``prefix``: any declared outcome reward (the judge, a programmatic reward...) scores each prefix of the answer
  (its first step, its first two, ...): a step scorer for free.

The step scores aggregate to one reward: ``last`` (the score of the answer so far, what step search ranks by),
``min`` (a chain is as good as its weakest step), ``mean`` or ``prod``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, model_validator

from ..engines.protocol import Pooler
from ..engines.registry import open_pooler
from ..tracing import inject
from .classifier import activate
from .protocol import Prompt, Reward, RewardConfigError, RewardError, RewardParams, prompt_text, register
from .scoring import RewardSet, RewardTerm


class PRMParams(RewardParams):
    backend: Literal["transformers", "vllm", "remote", "prefix"] = "transformers"
    """Where the step scores come from (see the module documentation)."""
    path: str | None = None
    """The PRM's local folder (``transformers``, ``vllm``; for ``remote``, its tokenizer: inputs are built here)."""
    url: str | None = Field(None, max_length=2000)
    """``remote``: the vLLM pooling server's base URL."""
    model: str | None = None
    """``remote``: the served model name (default: the server's first)."""
    api_key: SecretStr | None = None
    """``remote``: sent as ``Authorization: Bearer``; never logged."""
    outcome: str | None = None
    """``prefix``: the declared reward that scores each prefix (declared before this one)."""
    step_separator: str = Field("\n\n", min_length=1, max_length=32)
    """Where one step ends and the next begins."""
    step_tag: str = Field("<extra_0>", min_length=1, max_length=32)
    """Text placed after every step; the model's output at its (first) token is the step's score."""
    label: int = Field(1, ge=0)
    """Which output is the step score (Qwen-style PRMs: 1 = the step is good)."""
    activation: Literal["none", "sigmoid", "softmax"] = "softmax"
    """Applied to the logits at each step tag before ``label`` is read."""
    aggregate: Literal["last", "min", "mean", "prod"] = "last"
    """How step scores become the reward."""
    use_chat_template: bool | None = None
    """Render the question and the steps with the tokenizer's chat template; default: when it has one."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    batch_size: int = Field(8, ge=1, le=1024)
    max_length: int = Field(4096, ge=8, le=131072)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """``vllm``: arguments for the pooling engine."""

    @model_validator(mode="after")
    def _backend_needs(self) -> PRMParams:
        needs = {"transformers": ["path"], "vllm": ["path"], "remote": ["path", "url"], "prefix": ["outcome"]}
        missing = [k for k in needs[self.backend] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"backend {self.backend!r} needs {', '.join(missing)}")
        if self.path is not None and self.backend != "prefix" and not (Path(self.path) / "config.json").is_file():
            if not (self.backend == "remote" and (Path(self.path) / "tokenizer_config.json").is_file()):
                raise ValueError(f"{self.path!r} is not a local model folder (no config.json)")
        return self


def split_steps(text: str, separator: str) -> list[str]:
    """The steps of an answer: its pieces between separators, empty ones dropped (an answer is at least one step).

    >>> split_steps("Add 2 and 3.\\n\\nThat is 5.\\n\\n", "\\n\\n")
    ['Add 2 and 3.', 'That is 5.']
    >>> split_steps("", "\\n\\n")
    ['']
    """
    steps = [s.strip() for s in text.split(separator)]
    return [s for s in steps if s] or [""]


def aggregate(scores: Sequence[float], how: str) -> float:
    """One reward from step scores.

    >>> aggregate([0.9, 0.5, 0.8], "min"), aggregate([0.5, 0.5], "prod"), aggregate([0.9, 0.5, 0.8], "last")
    (0.5, 0.25, 0.8)
    """
    if how == "last":
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "mean":
        return sum(scores) / len(scores)
    return math.prod(scores)


@register("prm")
class PRMReward(Reward[PRMParams]):
    """Process reward: every step of the answer scored (by a PRM, or an outcome reward on each prefix), then
    aggregated (``last``, ``min``, ``mean``, ``prod``)."""

    request_params = frozenset({"aggregate"})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._tokenizer: Any = None
        self._tag_id: int | None = None
        self._model: Any = None  # transformers: (backbone, head) or a token-classification model
        self._pooler: Pooler | None = None  # vllm
        self._http: httpx.AsyncClient | None = None
        self._lock = threading.Lock()
        self.forward_passes = 0

    @property
    def upstream(self) -> bool:  # type: ignore[override]
        return self.params.backend == "remote"

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        p = self.params
        if p.backend == "prefix":
            self._outcome()  # fail at start-up if the outcome reward is missing
            return
        if self._tokenizer is None:
            await asyncio.to_thread(self._load_tokenizer)
        if p.backend == "transformers" and self._model is None:
            await asyncio.to_thread(self._load_transformers)
        elif p.backend == "vllm" and self._pooler is None:
            args = {"dtype": None if p.dtype == "auto" else p.dtype, "max_model_len": p.max_length, **p.engine_args}
            # A process-reward architecture pools at its step tag; vLLM's default tag is Qwen's (151651).
            args.setdefault("pooler_config", {"step_tag_id": self._tag_id})
            pooler = open_pooler(p.path, args)
            await pooler.start()
            self._pooler = pooler
        elif p.backend == "remote" and self._http is None:
            headers = {"Authorization": f"Bearer {p.api_key.get_secret_value()}"} if p.api_key else {}
            self._http = httpx.AsyncClient(timeout=p.timeout_s, headers=headers)

    async def close(self) -> None:
        pooler, self._pooler = self._pooler, None
        if pooler is not None:
            await pooler.shutdown()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.params.path)
        ids = tok.encode(self.params.step_tag, add_special_tokens=False)
        if not ids:
            raise RewardConfigError(f"reward {self.name!r}: step_tag {self.params.step_tag!r} tokenizes to nothing")
        self._tokenizer, self._tag_id = tok, ids[0]

    def _load_transformers(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification

        p = self.params
        device = p.device if p.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = "auto" if p.dtype == "auto" else getattr(torch, p.dtype)
        config = AutoConfig.from_pretrained(p.path)
        if any(a.endswith("ForProcessRewardModel") for a in config.architectures or []):
            # Qwen's PRM: a causal backbone and a Linear-ReLU-Linear head over every position.
            from safetensors.torch import load_file

            backbone = AutoModel.from_pretrained(p.path, dtype=dtype)
            weights = {}
            for file in Path(p.path).glob("*.safetensors"):
                weights.update({k: v for k, v in load_file(file).items() if k.startswith("score.")})
            hidden = config.hidden_size
            head = torch.nn.Sequential(
                torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, config.num_labels)
            )
            head.load_state_dict({k.removeprefix("score."): v for k, v in weights.items()})
            self._model = (backbone.to(device).eval(), head.to(device, backbone.dtype).eval(), device)
        else:
            model = AutoModelForTokenClassification.from_pretrained(p.path, dtype=dtype)
            self._model = (model.to(device).eval(), None, device)

    # ---- inputs ----------------------------------------------------------------------------------------------

    def _ids(self, prompt: Prompt, completion: str) -> list[int]:
        """The PRM's input for one answer: the question, then every step followed by the step tag."""
        p = self.params
        tok = self._tokenizer
        steps = "".join(f"{s}{p.step_tag}" for s in split_steps(completion, p.step_separator))
        chat = p.use_chat_template if p.use_chat_template is not None else bool(getattr(tok, "chat_template", None))
        if chat:
            history = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            text = tok.apply_chat_template(history + [{"role": "assistant", "content": steps}], tokenize=False)
            ids = tok.encode(text, add_special_tokens=False)
        else:
            ids = tok.encode(f"{prompt_text(prompt)}\n{steps}", add_special_tokens=True)
        return ids[-p.max_length :]  # keep the answer's end (its steps) when the input is too long

    def _step_scores(self, ids: list[int], rows: Sequence[Sequence[float]]) -> list[float]:
        """Each step's score, read at its tag. ``rows`` holds logits for every token of ``ids`` (token-classification
        models, and PRMs run in transformers) or only at the step tags (vLLM pooling a PRM at its ``step_tag_id``)."""
        p = self.params
        at = [i for i, t in enumerate(ids) if t == self._tag_id]
        if not at:
            raise RewardError(f"reward {self.name!r}: no step tag survived in the input", reward=self.name)
        if len(rows) == len(ids):
            rows = [rows[i] for i in at]
        elif len(rows) != len(at):
            raise RewardError(
                f"reward {self.name!r}: the model returned {len(rows)} rows for {len(at)} step tags; is the server's "
                f"pooler step_tag_id the id of {p.step_tag!r}?",
                reward=self.name,
                upstream=self.upstream,
            )
        return [activate([float(x) for x in row], p.activation)[p.label] for row in rows]

    # ---- backends --------------------------------------------------------------------------------------------

    def _forward(self, batch: list[list[int]]) -> list[list[list[float]]]:
        import torch

        model, head, device = self._model
        with self._lock, torch.inference_mode():
            self.forward_passes += 1
            width = max(map(len, batch))
            pad = self._tokenizer.pad_token_id or 0
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in batch], device=device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=device)
            if head is None:
                logits = model(input_ids=input_ids, attention_mask=mask).logits
            else:
                logits = head(model(input_ids=input_ids, attention_mask=mask).last_hidden_state)
            return [row[: len(ids)].float().tolist() for row, ids in zip(logits, batch)]

    async def _rows_transformers(self, inputs: list[list[int]]) -> list[list[list[float]]]:
        size = self.params.batch_size
        out: list[list[list[float]]] = []
        for start in range(0, len(inputs), size):
            out.extend(await asyncio.to_thread(self._forward, inputs[start : start + size]))
        return out

    async def _rows_vllm(self, inputs: list[list[int]]) -> list[list[list[float]]]:
        assert self._pooler is not None
        return await self._pooler.pool(inputs, "token_classify", f"reward-{self.name}-{uuid.uuid4().hex[:12]}")

    async def _rows_remote(self, inputs: list[list[int]]) -> list[list[list[float]]]:
        p = self.params
        body: dict[str, Any] = {"input": inputs, "task": "token_classify", "use_activation": False}
        if p.model:
            body["model"] = p.model
        try:
            url = p.url.rstrip("/").removesuffix("/v1") + "/pooling"
            response = await self._http.post(url, json=body, headers=inject())  # type: ignore[union-attr]
        except httpx.HTTPError as exc:
            raise RewardError(f"reward {self.name!r}: {type(exc).__name__}", reward=self.name, upstream=True) from exc
        if response.status_code >= 400:
            raise RewardError(
                f"reward {self.name!r}: the pooling server answered {response.status_code}",
                reward=self.name,
                upstream=True,
            )
        return [item["data"] for item in response.json()["data"]]

    def _outcome(self) -> Reward:
        reward = self.context.rewards.get(self.params.outcome or "")
        if reward is None or reward is self:
            raise RewardConfigError(
                f"reward {self.name!r}: outcome {self.params.outcome!r} is not a declared reward (declare it before)"
            )
        return reward

    async def step_scores(self, prompt: Prompt, completions: Sequence[str]) -> list[list[float]]:
        """Every step's score, for every completion (one batched call to the backend)."""
        p = self.params
        if p.backend == "prefix":
            # every prefix of every answer, scored by the outcome reward in one batched call
            spans = []
            texts: list[str] = []
            for completion in completions:
                steps = split_steps(completion, p.step_separator)
                spans.append((len(texts), len(steps)))
                texts.extend(p.step_separator.join(steps[: i + 1]) for i in range(len(steps)))
            scores = await RewardSet([RewardTerm(self._outcome())]).score(prompt, texts)
            values = [math.nan if v is None else v for v in scores.total]
            return [values[start : start + count] for start, count in spans]
        await self.start()
        inputs = [self._ids(prompt, c) for c in completions]
        if p.backend == "transformers":
            rows = await self._rows_transformers(inputs)
        elif p.backend == "vllm":
            rows = await self._rows_vllm(inputs)
        else:
            rows = await self._rows_remote(inputs)
        return [self._step_scores(ids, r) for ids, r in zip(inputs, rows)]

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        return [aggregate(s, self.params.aggregate) for s in await self.step_scores(prompt, completions)]
