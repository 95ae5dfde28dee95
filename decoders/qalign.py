"""``qalign``: sample, don't search. A Metropolis-Hastings chain over whole answers whose stationary law is the
model tilted by the reward (Faria and Smith 2025, "Sample, Don't Search: Rethinking Test-Time Alignment for
Language Models", arXiv 2504.03790; QUEST, Faria et al. 2024).

Target: pi(y) proportional to pi_ref(y) exp(r(x, y) / beta). From the current answer y (its first state a sample
of the model), a proposal keeps a prefix y<i, the index i drawn uniformly from [0, |y|), and samples a new suffix
from the model; the prefix is read from vLLM's prefix cache. Since both the target and the proposal hold the
model's probability of the suffix, those cancel, and the proposal y' is accepted with probability

    min(1, exp((r(y') - r(y)) / beta) * |y| / |y'|),

the length ratio correcting for the uniform index (the reverse move picks from |y'| places). Each step is one
engine call of one sample and one reward call. The chain is anytime: under a budget it stops at the state it has.
The answer is the chain's last state, or (``select: majority``) the most frequent final answer among the states
after ``burn_in`` (the paper's majority variant; answers read as ``self_consistency`` reads them).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Literal

from pydantic import Field

from ..answers import exact, last_number
from .context import DecodeContext
from .protocol import Decoder, DecoderParams, cap, register
from .types import Candidate, Cost, DecodeRequest, DecoderError, DecodeResult


class QAlignParams(DecoderParams):
    steps: int = Field(16, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """Proposals after the first sample: the chain's length."""
    beta: float = Field(1.0, gt=0.0, le=1000.0)
    """Temperature of the tilt exp(r / beta): small follows the reward closely, large stays near the model."""
    burn_in: int = Field(0, ge=0, le=4096)
    """``majority``: states left out of the vote at the start of the chain."""
    select: Literal["last", "majority"] = "last"
    """The answer: the chain's last state, or the most frequent final answer after ``burn_in``."""
    extract: Literal["last_number", "exact"] = "last_number"
    """``majority``: how a state's final answer is read."""


def acceptance(reward_new: float, reward_old: float, len_old: int, len_new: int, beta: float) -> float:
    """The probability of moving to the proposal: min(1, exp((r' - r) / beta) * |y| / |y'|).

    >>> acceptance(1.0, 1.0, 10, 10, 0.5), round(acceptance(0.0, 1.0, 10, 10, 1.0), 4), acceptance(0.0, 0.0, 4, 8, 1.0)
    (1.0, 0.3679, 0.5)
    """
    log_ratio = (reward_new - reward_old) / beta + math.log(max(len_old, 1) / max(len_new, 1))
    return 1.0 if log_ratio >= 0 else math.exp(log_ratio)


@register("qalign")
class QAlign(Decoder[QAlignParams]):
    """MCMC over answers toward pi_ref * exp(r / beta): proposals resample a random suffix of the current answer."""

    structured_output = True
    continues_prefix = True
    requires_reward = True
    single_answer = True
    anytime = True
    description = "QAlign: Metropolis-Hastings over answers, suffixes resampled, toward the reward-tilted model."

    def worst_case(self, request: DecodeRequest) -> Cost:
        t = request.sampling.max_tokens
        prompt = len(request.prompt_token_ids)
        return Cost(prompt + (self.params.steps + 1) * t, "decoder.steps", "(steps + 1) x max_tokens", unit=prompt + t)

    def validate(self, request, engine) -> None:
        if self.params.select == "majority" and self.params.burn_in >= self.params.steps + 1:
            raise DecoderError("burn_in leaves no state to vote on; lower decoder.burn_in", "decoder.burn_in")

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        p, s = self.params, request.sampling
        rng = random.Random(s.seed)
        prompt = request.prompt_token_ids
        with ctx.phase("generate"):
            [gen] = await ctx.engine.generate([prompt], s.but(n=1, seed=ctx.seed(s.seed, 1)), request.request_id)
        current = Candidate.of(gen.completions[0], index=0)
        await ctx.score(request.prompt, [current])
        if current.reward is None:
            raise DecoderError(f"the reward could not score the chain's first state: {current.dropped}", "reward")
        proposals, states, accepted = [current], [current], 0
        for step in range(1, p.steps + 1):
            if not ctx.affordable(s.max_tokens):
                break
            cut = rng.randrange(max(current.num_tokens, 1))
            prefix = current.token_ids[:cut]
            with ctx.phase("generate"):
                [gen] = await ctx.engine.generate(
                    [prompt + prefix],
                    request.continued(s.but(n=1, max_tokens=s.max_tokens - cut, seed=ctx.seed(s.seed, 1))),
                    f"{request.request_id}-q{step}",
                )
            suffix = gen.completions[0]
            tokens = prefix + list(suffix.token_ids)
            proposal = Candidate(
                index=step,
                text=ctx.engine.tokenizer.decode(tokens),
                token_ids=tokens,
                finish_reason=suffix.finish_reason,
            )
            await ctx.score(request.prompt, [proposal])
            proposals.append(proposal)
            usable = proposal.reward is not None and proposal.dropped is None and proposal.invalid is None
            a = (
                acceptance(proposal.reward, current.reward, current.num_tokens, proposal.num_tokens, p.beta)
                if usable
                else 0.0
            )
            proposal.score = a
            if rng.random() < a:
                current, accepted = proposal, accepted + 1
            states.append(current)
        chosen, votes = current, None
        if p.select == "majority":
            read = last_number if p.extract == "last_number" else exact
            kept = states[p.burn_in :]
            answers = [read(c.text) for c in kept]
            votes = Counter(a for a in answers if a is not None)
            if votes:
                winner = max(votes, key=lambda a: (votes[a], -answers.index(a)))
                chosen = kept[max(i for i, a in enumerate(answers) if a == winner)]  # its latest state
        info = {
            "chain": [c.index for c in states],
            "accepted": accepted,
            "acceptance_rate": accepted / max(len(proposals) - 1, 1),
        }
        if votes is not None:
            info["votes"] = dict(votes.most_common())
        return ctx.result(request, [chosen], proposals, **info)
