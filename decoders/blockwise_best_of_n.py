"""``blockwise_best_of_n``: best-of-K, one block at a time, streamed as it is chosen (block-wise controlled
decoding, Mudgal et al. 2024).

From the committed prefix, K continuations of ``block`` tokens are sampled in ONE engine call (``n=K``: the
prefix is read once, from vLLM's prefix cache after the first block), prefix + continuation are scored in ONE
reward call, the best is committed and streamed, and the next block starts from it. A client sees the first
block after one block's time instead of after N whole answers; a short ``first_block`` brings that close to
sampling's first token, the rest still chosen block by block. With ``block`` at least ``max_tokens`` (and no
shorter first block) there is one block: exactly best_of_n with K candidates and the same seed.

A one-token first block need not cost K sequences. vLLM starts the K sequences of an ``n=K`` call one engine step
apart (the parent's children reach the engine core one message at a time, and an idle core starts stepping on
the first), so its first token comes about two steps in, not one. With ``first_token: one_step`` the K first
tokens are drawn from ONE decoding step's next-token distribution instead: one sequence, one step, as sampling's
first token. The draw is the engine's sampler replayed on the model's 20 likeliest next tokens' log-probs
(temperature, min_p, top_k, top_p, stop tokens held back before ``min_tokens``), so it is exact but for the tail
beyond them: the first token is drawn as with top-k 20 (fewer if the engine's ``max_logprobs`` is lower).
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import replace
from typing import Literal

from pydantic import Field

from ..engines.protocol import Completion, EngineInfo, SamplingConfig, StreamDelta, Tokenizer
from .context import DecodeContext
from .protocol import DecoderError, DecoderParams, StreamingDecoder, cap, ranked_or_raise, register
from .search import next_row, top_k
from .types import Candidate, Cost, DecodeRequest, DecodeResult

ONE_STEP_TOKENS = 20
"""How many of the model's likeliest next tokens ``one_step`` draws from: vLLM's default ``max_logprobs`` (fewer
where the engine returns fewer; never a whole vocabulary's log-probs, which vLLM would detokenize one by one)."""


def one_step_width(engine: EngineInfo) -> int:
    """The top log-probs a ``one_step`` first token asks for (vLLM's ``max_logprobs`` -1 means no cap).

    >>> [one_step_width(EngineInfo("m", 512, 512, max_logprobs=k)) for k in (-1, 0, 5, 64)]
    [20, 0, 5, 20]
    """
    return ONE_STEP_TOKENS if engine.max_logprobs < 0 else min(engine.max_logprobs, ONE_STEP_TOKENS)


class BlockwiseParams(DecoderParams):
    num_candidates: int = Field(4, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """K, continuations sampled per block."""
    block: int = Field(16, ge=1, le=4096, json_schema_extra=cap("max_tokens"))
    """Tokens per block: what is committed (and streamed) at a time."""
    first_block: int | None = Field(None, ge=1, le=4096, json_schema_extra=cap("max_tokens"))
    """Tokens of the first block (default: ``block``): a short one streams the first token sooner."""
    first_token: Literal["samples", "one_step"] = "samples"
    """How a one-token first block draws its K candidates: ``samples``, K sequences of one ``n=K`` call;
    ``one_step``, K draws from one decoding step's 20 likeliest tokens (sampling's time to first token)."""


@register("blockwise_best_of_n")
class BlockwiseBestOfN(StreamingDecoder[BlockwiseParams]):
    """Best-of-K per block of tokens: sample K continuations, commit the best by reward, stream it, repeat."""

    structured_output = True
    continues_prefix = True
    requires_reward = True
    single_answer = True
    anytime = True
    description = "Best-of-K per block: sample K continuations of a block, commit and stream the best, repeat."

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        if self.params.first_token == "samples":
            return
        why = "decoder.first_token='one_step' draws a one-token first block"
        if self.params.first_block != 1:
            raise DecoderError(f"{why}; set first_block=1", "decoder.first_block")
        s = request.sampling
        for param, used in (("repetition_penalty", s.repetition_penalty != 1.0), ("logit_bias", bool(s.logit_bias))):
            if used:
                raise DecoderError(
                    f"{why} from the model's raw log-probs, which do not include {param}; unset {param} or use "
                    "first_token='samples'",
                    param,
                )
        if one_step_width(engine) < 1:
            raise DecoderError(
                f"{why} from the engine's log-probs, and this engine returns none", "decoder.first_token"
            )

    def block_cost(self, tokens: int) -> int:
        return self.params.num_candidates * tokens + tokens  # K continuations, and the committed block re-read

    def block_size(self, blocks_done: int, tokens_left: int) -> int:
        p = self.params
        return min(p.block if blocks_done or p.first_block is None else p.first_block, tokens_left)

    def worst_case(self, request: DecodeRequest) -> Cost:
        t = request.sampling.max_tokens
        first = self.block_size(0, t)
        rest = math.ceil((t - first) / self.params.block) * self.block_cost(min(self.params.block, t))
        prompt = len(request.prompt_token_ids)
        return Cost(
            prompt + self.block_cost(first) + rest,
            "decoder.num_candidates",
            "num_candidates x max_tokens, plus each committed block read again",
            unit=prompt + self.block_cost(first),
        )

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        p, s = self.params, request.sampling
        committed: list[int] = []
        text = ""
        candidates: list[Candidate] = []
        finish: str | None = None
        while finish is None:
            blocks = len(candidates) // p.num_candidates
            size = self.block_size(blocks, s.max_tokens - len(committed))
            if blocks and not ctx.affordable(self.block_cost(size)):
                finish = "budget"
                yield StreamDelta(index=0, text="", token_ids=[], finish_reason="budget")
                break
            with ctx.phase("generate"):
                seed = ctx.seed(s.seed, p.num_candidates)
                rid = request.request_id if not blocks else f"{request.request_id}-b{blocks}"
                if not blocks and p.first_token == "one_step":
                    drawn = await self.one_step(request, ctx, seed, rid)
                else:
                    block_params = request.continued(
                        s.but(
                            n=p.num_candidates,
                            max_tokens=size,
                            min_tokens=max(0, s.min_tokens - len(committed)),
                            seed=seed,
                        )
                    )
                    [gen] = await ctx.engine.generate([request.prompt_token_ids + committed], block_params, rid)
                    drawn = gen.completions
            fresh = [
                Candidate(
                    index=len(candidates) + j,
                    text=text + c.text,
                    token_ids=committed + list(c.token_ids),
                    finish_reason=c.finish_reason,
                )
                for j, c in enumerate(drawn)
            ]
            await ctx.score(request.prompt, fresh)  # prefix + continuation: the answer so far
            candidates.extend(fresh)
            [best] = ranked_or_raise(fresh, 1)
            new_ids, new_text = best.token_ids[len(committed) :], best.text[len(text) :]
            committed, text = list(best.token_ids), best.text
            if best.finish_reason == "stop":
                finish = "stop"
            elif len(committed) >= s.max_tokens:
                finish = "length"
            yield StreamDelta(index=0, text=new_text, token_ids=new_ids, finish_reason=finish)  # type: ignore[arg-type]
        answer = replace(best, finish_reason=finish)
        yield ctx.result(request, [answer], candidates, blocks=len(candidates) // p.num_candidates)

    async def one_step(
        self, request: DecodeRequest, ctx: DecodeContext, seed: int | None, rid: str
    ) -> list[Completion]:
        """K one-token completions drawn from one decoding step: the model's top 20 next tokens (their log-probs) in
        one greedy one-token call, then the request's sampler replayed on them with a generator seeded like the
        ``n=K`` call it replaces (so later blocks draw the same seeds either way)."""
        s = request.sampling
        step = SamplingConfig(
            max_tokens=1, temperature=0.0, logprobs=one_step_width(ctx.engine.info), constraint=s.constraint
        )
        [gen] = await ctx.engine.generate([request.prompt_token_ids], step, rid)
        row = ctx.shaped(request, [], next_row(gen.completions[0], 0, request))
        tokenizer = ctx.engine.tokenizer
        eos = tokenizer.eos_token_id
        ends = {*s.stop_token_ids, *([eos] if eos is not None and not s.ignore_eos else [])}
        tokens = draw_tokens(row, s, self.params.num_candidates, random.Random(seed), ends if s.min_tokens else ())
        context = request.prompt_token_ids[-4:]
        return [one_token(j, t, s, tokenizer, ends, context) for j, t in enumerate(tokens)]


def draw_tokens(
    row: dict[int, float],
    s: SamplingConfig,
    k: int,
    rng: random.Random,
    held: Collection[int] = (),
) -> list[int]:
    """``k`` tokens drawn independently as vLLM's sampler draws one, from a step's top log-probs ``row`` (raw,
    before temperature) instead of the whole vocabulary: ``held`` tokens removed (stop tokens before
    ``min_tokens``), then temperature, min_p (against the most likely token), top_k, top_p (nucleus of what is
    left), renormalised over what remains.

    >>> lps = {1: math.log(0.5), 2: math.log(0.3), 3: math.log(0.2)}
    >>> draw_tokens(lps, SamplingConfig(temperature=0.0), 3, random.Random(0))
    [1, 1, 1]
    >>> sorted(set(draw_tokens(lps, SamplingConfig(top_p=0.7), 50, random.Random(0))))
    [1, 2]
    >>> sorted(set(draw_tokens(lps, SamplingConfig(min_p=0.5), 50, random.Random(0))))
    [1, 2]
    """
    ranked = [(t, lp) for t, lp in top_k(row, len(row)) if t not in held and lp > -math.inf]
    if not ranked:
        raise DecoderError(
            "the engine returned no next-token log-probs to draw a first token from", "decoder.first_token"
        )
    if s.greedy:
        return [ranked[0][0]] * k
    weights = [math.exp((lp - ranked[0][1]) / s.temperature) for _, lp in ranked]  # relative to the most likely
    keep = len([w for w in weights if w >= s.min_p])
    if s.top_k > 0:
        keep = min(keep, s.top_k)
    weights = weights[:keep]
    if s.top_p < 1.0:
        total, mass = sum(weights), 0.0
        for i, w in enumerate(weights):
            mass += w / total
            if mass >= s.top_p:
                weights = weights[: i + 1]
                break
    return rng.choices([t for t, _ in ranked[: len(weights)]], weights=weights, k=k)


def one_token(
    index: int, token: int, s: SamplingConfig, tokenizer: Tokenizer, ends: Collection[int], context: Sequence[int] = ()
) -> Completion:
    """A one-token completion as the engine reports it: a stop token (``ends``: the stop token ids, and EOS unless
    ``ignore_eos``) ends the answer with no text; a stop string in the token's text ends it there. The text is
    decoded after the prompt's last tokens ``context``, as the engine's incremental detokenizer does (a
    SentencePiece token's leading space survives only after other text)."""
    if token in ends:
        return Completion(index=index, text="", token_ids=[token], finish_reason="stop")
    skip = s.skip_special_tokens
    before = tokenizer.decode(context, skip_special_tokens=skip)
    after = tokenizer.decode([*context, token], skip_special_tokens=skip)
    text = after[len(before) :] if after.startswith(before) else tokenizer.decode([token], skip_special_tokens=skip)
    hits = [(text.index(stop), stop) for stop in s.stop if stop in text]
    if hits:
        at, stop = min(hits)
        cut = text[: at + (len(stop) if s.include_stop_str_in_output else 0)]
        return Completion(index=index, text=cut, token_ids=[token], finish_reason="stop", stop_reason=stop)
    return Completion(index=index, text=text, token_ids=[token], finish_reason="length")
