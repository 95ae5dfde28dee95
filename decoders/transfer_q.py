"""``transfer_q``: reward-guided token selection with rollouts (Transfer Q*); :class:`TokenGuidance` is the search
it shares with ``args``.

Transfer Q* (Chakraborty et al. 2024, arXiv 2405.20495): at each step the served model pi_sft proposes its top-k
tokens z; for each, a baseline model rho_BL (another served model, or the same one) rolls out a continuation tau
from [prefix, z]; Q(s, z) = r(x, [prefix, z, tau]). The next token follows pi(z | s) ~ pi_sft(z | s) * exp(Q / alpha):
``mode=greedy`` takes the argmax of log pi_sft + Q / alpha, ``mode=sample`` samples that softmax. Indirect
transfer (rho_BL aligned to a different reward r_BL) corrects Q to exp(beta * (r - r_BL)) * r, as the reference
code's indirect.py does; name r_BL among the request's rewards with ``baseline_reward``.

All k rollouts of a step are ONE engine call and ONE reward call. When rho_BL is the served model, the chosen
rollout's log-probs also give the next step's top-k, so a step costs one engine call. ``guide_every=m`` re-plans
every m tokens, committing the chosen token and the first m - 1 tokens of its rollout.

ARGS (Khanov et al. 2024) is the case ``rollout_tokens = 0``: score = log pi(z | s) + w * r(prefix + z); it is
offered as its own decoder, ``args`` (:mod:`alignd.decoders.args`).
"""

from __future__ import annotations

import math
import random
from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import Field

from ..engines.protocol import EngineInfo, StreamDelta
from ..rewards.scoring import Scores
from .context import DecodeContext
from .protocol import DecoderParams, P, StreamingDecoder, cap, check_top_k, register
from .search import SearchPath, apply_stops, commit, extend, fill_top_k, propose, scored, softmax_sample, to_candidate
from .types import Cost, DecodeRequest, DecoderError, DecodeResult


class TransferQParams(DecoderParams):
    top_k: int = Field(10, ge=1, le=64, json_schema_extra=cap("max_logprobs"))
    """k, tokens of pi_sft considered per step."""
    rollout_tokens: int = Field(32, ge=0, le=1024, json_schema_extra=cap("max_tokens"))
    """Length of each rollout (shorter at EOS); the reference code uses 20 (direct) and 5 (indirect)."""
    rollout_temperature: float = Field(1.0, ge=0.0, le=2.0)
    """Temperature of the baseline's rollouts (tau ~ rho_BL); 0 for greedy rollouts."""
    alpha: float = Field(1.0, gt=0.0, le=1e9)
    """alpha: log pi_sft + Q / alpha. A very large alpha is greedy decoding of pi_sft."""
    mode: Literal["greedy", "sample"] = "greedy"
    """``greedy``: argmax of the score; ``sample``: draw from softmax(score / temperature)."""
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    """Temperature of ``mode=sample``."""
    guide_every: int = Field(1, ge=1, le=1024)
    """m: commit the chosen token plus the first m - 1 tokens of its rollout, then re-plan."""
    baseline_model: str | None = Field(None, max_length=128)
    """rho_BL: a served model for the rollouts; default: the served model itself."""
    baseline_reward: str | None = Field(None, max_length=64)
    """Indirect transfer: the name, among the request's rewards, of r_BL (the reward rho_BL is aligned to)."""
    beta: float = Field(0.5, ge=0.0, le=100.0)
    """Indirect transfer: Q = exp(beta * (r - r_BL)) * r."""


def q_values(scores: Scores, params: TransferQParams, weights: dict[str, float]) -> list[float | None]:
    """Q of each candidate: the weighted reward (direct), or the importance-corrected one (indirect)."""
    if params.baseline_reward is None:
        return scores.total
    if params.baseline_reward not in scores.per_reward:
        raise DecoderError(
            f"baseline_reward {params.baseline_reward!r} is not among the request's rewards {sorted(weights)}",
            "decoder.baseline_reward",
        )
    others = [name for name in weights if name != params.baseline_reward]
    if not others:
        raise DecoderError("indirect transfer needs a target reward besides baseline_reward", "reward")
    out: list[float | None] = []
    for i in range(len(scores.total)):
        r_bl = scores.per_reward[params.baseline_reward][i]
        parts = [scores.per_reward[name][i] for name in others]
        if r_bl is None or any(v is None for v in parts):
            out.append(None)
            continue
        r = sum(weights[name] * (v or 0.0) for name, v in zip(others, parts))
        out.append(math.exp(params.beta * (r - r_bl)) * r)
    return out


class TokenGuidance(StreamingDecoder[P]):
    """Reward-guided token selection: Transfer Q* and its rollout-free special case ARGS share this search."""

    structured_output = True
    continues_prefix = True
    requires_reward = True
    single_answer = True
    streams_tokens = True
    anytime = True

    @abstractmethod
    def search_params(self) -> TransferQParams:
        """The Transfer Q* parameters this decoder runs with."""

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        check_top_k(self.search_params().top_k, engine)

    def step_cost(self) -> int:
        """Engine tokens of one step at most: k rollouts, each one new prompt token and the rollout, and the
        policy's own top-k call."""
        p = self.search_params()
        return p.top_k * (p.rollout_tokens + 1) + 2

    def worst_case(self, request: DecodeRequest) -> Cost:
        p = self.search_params()
        param = "decoder.rollout_tokens" if p.rollout_tokens / 32 > p.top_k / 10 else "decoder.top_k"
        prompt = len(request.prompt_token_ids)
        return Cost(
            prompt + request.sampling.max_tokens * self.step_cost(),
            param,
            "top_k x (rollout_tokens + 1) tokens per step, up to max_tokens steps",
            unit=prompt + self.step_cost(),
        )

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        p = self.search_params()
        request = self.prepare(request, ctx.engine, ctx.rewards)
        policy, tok = ctx.engine, ctx.engine.tokenizer
        baseline = ctx.engine_for(p.baseline_model, "decoder.baseline_model")
        same = baseline is policy
        eos = tok.eos_token_id
        max_tokens = request.sampling.max_tokens
        weights = {t.reward.name: t.weight for t in ctx.reward_set.terms}
        rng = random.Random(request.sampling.seed)
        path = SearchPath()
        step = 0
        while path.finished is None:
            if step and not ctx.affordable(self.step_cost()):
                path.finished = "budget"  # cut short by the request's budget, not by max_tokens
                yield StreamDelta(index=0, text="", token_ids=[], finish_reason="budget")
                break
            with ctx.phase("expand"):
                await fill_top_k(policy, request, [path], p.top_k, f"s{step}-topk")
            proposals = propose([path], p.top_k, ctx, request)
            room = max_tokens - len(path.tokens) - 1
            with ctx.phase("rollout"):
                await extend(
                    baseline,
                    request,
                    proposals,
                    min(p.rollout_tokens, room),
                    temperature=p.rollout_temperature,
                    logprobs=p.top_k if same else None,
                    tag=f"s{step}",
                    eos=eos,
                    seed=ctx.seed(request.sampling.seed, len(proposals)),
                )
            scores = await ctx.score_texts(request.prompt, [tok.decode(pr.tokens) for pr in proposals])
            qs = q_values(scores, p, weights)
            live = [(proposals[i], proposals[i].logprob + qs[i] / p.alpha) for i in scored(qs, scores)]
            values = [v for _, v in live]
            if p.mode == "greedy":
                pick = max(range(len(live)), key=lambda i: (values[i], -i))
            else:
                pick = softmax_sample(values, p.temperature, rng)
            chosen, value = live[pick]
            extra = 0
            if chosen.extension is not None and p.guide_every > 1:
                extra = min(p.guide_every - 1, len(chosen.extension.token_ids))
            new = commit(chosen, request, eos, extra)
            if not same:
                new.next_top = None  # rollouts came from rho_BL: ask pi_sft for its own top-k
                if extra:  # and for the log-probs of the committed rollout tokens under pi_sft
                    lps = await policy.continuation_logprobs(
                        [request.prompt_token_ids + path.tokens + [chosen.token]],
                        [new.tokens[len(path.tokens) + 1 :]],
                        f"{request.request_id}-s{step}-lp",
                    )
                    new.token_logprobs = path.token_logprobs + [chosen.logprob] + lps[0]
                    new.logprob = sum(new.token_logprobs)
            new.score = value
            apply_stops(new, tok.decode(new.tokens), request.sampling.stop)
            delta = new.tokens[len(path.tokens) :]
            if delta or new.finished:
                yield StreamDelta(index=0, text=tok.decode(delta), token_ids=delta, finish_reason=new.finished)
            path = new
            step += 1
        candidate = to_candidate(0, path, ctx, request.sampling.stop)
        await ctx.score(request.prompt, [candidate])
        yield ctx.result(request, [candidate], [candidate], steps=step)


@register("transfer_q")
class TransferQ(TokenGuidance[TransferQParams]):
    """Transfer Q*: top-k of pi_sft, one rollout of rho_BL each, next token by log pi_sft + Q / alpha."""

    description = "Transfer Q*: token choice by log pi + Q/alpha, Q from reward-scored baseline rollouts."

    def search_params(self) -> TransferQParams:
        return self.params
