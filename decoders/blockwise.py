"""``blockwise_best_of_n``: best-of-K, one block at a time, streamed as it is chosen (block-wise controlled
decoding, Mudgal et al. 2024).

From the committed prefix, K continuations of ``block`` tokens are sampled in ONE engine call (``n=K``: the
prefix is read once, from vLLM's prefix cache after the first block), prefix + continuation are scored in ONE
reward call, the best is committed and streamed, and the next block starts from it. A client sees the first
block after one block's time instead of after N whole answers; a short ``first_block`` brings that close to
sampling's first token (one decoding step of K sequences), the rest still chosen block by block. With ``block``
at least ``max_tokens`` (and no shorter first block) there is one block: exactly best_of_n with K candidates and
the same seed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import replace

from pydantic import Field

from ..engines.protocol import StreamDelta
from .context import DecodeContext
from .protocol import DecoderParams, StreamingDecoder, cap, ranked_or_raise, register
from .types import Candidate, Cost, DecodeRequest, DecodeResult


class BlockwiseParams(DecoderParams):
    num_candidates: int = Field(4, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """K, continuations sampled per block."""
    block: int = Field(16, ge=1, le=4096, json_schema_extra=cap("max_tokens"))
    """Tokens per block: what is committed (and streamed) at a time."""
    first_block: int | None = Field(None, ge=1, le=4096, json_schema_extra=cap("max_tokens"))
    """Tokens of the first block (default: ``block``): a short one streams the first token sooner."""


@register("blockwise_best_of_n")
class BlockwiseBestOfN(StreamingDecoder[BlockwiseParams]):
    """Best-of-K per block of tokens: sample K continuations, commit the best by reward, stream it, repeat."""

    requires_reward = True
    single_answer = True
    anytime = True
    description = "Best-of-K per block: sample K continuations of a block, commit and stream the best, repeat."

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
                [gen] = await ctx.engine.generate(
                    [request.prompt_token_ids + committed],
                    s.but(
                        n=p.num_candidates,
                        max_tokens=size,
                        min_tokens=max(0, s.min_tokens - len(committed)),
                        seed=ctx.seed(s.seed, p.num_candidates),
                    ),
                    request.request_id if not blocks else f"{request.request_id}-b{blocks}",
                )
            fresh = [
                Candidate(
                    index=len(candidates) + j,
                    text=text + c.text,
                    token_ids=committed + list(c.token_ids),
                    finish_reason=c.finish_reason,
                )
                for j, c in enumerate(gen.completions)
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
