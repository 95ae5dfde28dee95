"""``self_certainty``: how sure the served model is of an answer, from its own next-token distributions; no reward
model needed (Kang, Zhao and Song 2025, "Scalable Best-of-N Selection for Large Language Models via
Self-Certainty", arXiv 2502.18581).

For an answer y of T tokens over a vocabulary of V tokens,

    SC(y) = -(1 / (T V)) sum_t sum_j log(V p(j | x, y<t)),

the mean over positions of KL(uniform || p_t): 0 for a uniform next-token distribution, larger the more peaked.
Best-of-N by self-certainty picks the answer the model is surest of; the paper finds it scales with N like
reward-model selection on reasoning tasks, and that voting weighted by its ranks (Borda) beats plain majority.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

from pydantic import Field

from ..engines.protocol import SamplingConfig
from .protocol import Prompt, Reward, RewardConfigError, RewardParams, prompt_ids, register

_TINY = 1e-30


def token_self_certainty(row: dict[int, float], vocab_size: int) -> float:
    """KL(uniform || p) at one position, from the top-k log-probs ``row`` the engine returns.

    **Approximation.** The engine returns the k most likely tokens only; the mass 1 - m they leave is spread
    uniformly over the other V - k tokens, each taking q = (1 - m) / (V - k). Then

        sum_j log p_j ~ sum_{top k} log p_j + (V - k) log q.

    **Error bound.** Given the tail's mass, log is concave, so a uniform tail maximises the tail's sum of logs
    (Jensen): the approximation never overstates sum_j log p_j, and the exact self-certainty is never below the
    approximate one. The gap is (1/V) sum_{tail} log(q / p_j) >= 0: zero for a uniform tail, and at most
    ((V - k) / V) log(q / p_min), p_min the tail's least likely token. Since p_min >= p_top e^-D for a logit range
    D, the gap per position is at most log(q / p_top) + D nats: bounded by the model's logit range, whatever k.
    Candidates of one prompt are ranked, not measured, and their tails are alike, so the ranking is what counts.

    >>> round(token_self_certainty({0: math.log(0.25), 1: math.log(0.25)}, 4), 6)  # uniform over 4: 0
    0.0
    >>> token_self_certainty({0: 0.0}, 4) > 10  # all mass on one token: very sure (the tail floored at 1e-30)
    True
    """
    k = len(row)
    logs = list(row.values())
    mass = min(1.0, sum(math.exp(v) for v in logs))
    rest = vocab_size - k
    tail = rest * math.log(max(1.0 - mass, _TINY) / rest) if rest > 0 else 0.0
    return -math.log(vocab_size) - (sum(logs) + tail) / vocab_size


def self_certainty(rows: Sequence[dict[int, float] | None], vocab_size: int) -> float:
    """SC(y): the mean of :func:`token_self_certainty` over the answer's positions (0 for an empty answer)."""
    values = [token_self_certainty(row, vocab_size) for row in rows if row]
    return sum(values) / len(values) if values else 0.0


class SelfCertaintyParams(RewardParams):
    model: str | None = None
    """The served model whose certainty is read (default: the server's default model), normally the one that
    wrote the answers."""
    top_k: int = Field(20, ge=1, le=1024)
    """Log-probs read per position (the rest of the vocabulary is approximated; see the module). At most the
    engine's ``max_logprobs`` (vLLM: 20 by default)."""


@register("self_certainty")
class SelfCertaintyReward(Reward[SelfCertaintyParams]):
    """Self-certainty of each answer under the served model, from its top-k next-token log-probs.

    All answers of a prompt go to the engine in one call: each is read back as the prompt (rendered as the model
    reads it: the chat template for messages) followed by the answer, with ``prompt_logprobs=top_k``, so the
    shared prompt is prefilled once and read from the prefix cache for the others. A decoder that renders its
    own prompt (URIAL's prefix) is read on the plain prompt.
    """

    async def start(self) -> None:
        engine = self.served(self.params.model)
        if engine.info.max_logprobs and self.params.top_k > engine.info.max_logprobs:
            raise RewardConfigError(
                f"reward {self.name!r}: top_k={self.params.top_k} is over the engine's max_logprobs "
                f"({engine.info.max_logprobs})"
            )

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        engine = self.served(self.params.model)
        x = prompt_ids(engine, prompt)
        answers = [engine.tokenizer.encode(c) for c in completions]
        params = SamplingConfig(max_tokens=1, temperature=0.0, prompt_logprobs=self.params.top_k)
        gens = await engine.generate([x + y for y in answers], params, f"reward-{self.name}-{uuid.uuid4().hex[:12]}")
        vocab = engine.info.vocab_size
        scores = []
        for y, gen in zip(answers, gens):
            rows = (gen.prompt_logprobs or [])[len(x) :]
            # each row holds the top k and the actual token; keep the top k (the actual token is one of the V)
            top = [
                dict(sorted(row.items(), key=lambda kv: -kv[1])[: self.params.top_k]) if row else None for row in rows
            ]
            scores.append(self_certainty(top, vocab) if y else 0.0)
        return scores
