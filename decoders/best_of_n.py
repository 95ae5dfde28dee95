"""``best_of_n``: sample N candidates, score them all, return the best (spec section 1).

The N samples come from ONE engine call with ``n=N``: vLLM prefills the prompt once and forks N sequences from
it. All N are scored in ONE reward call. With a continuous reward the pick beats a fresh sample from the model
in N/(N+1) of prompts, and KL(best-of-N || model) <= log N - (N-1)/N (Beirami et al. 2024).
"""

from __future__ import annotations

from pydantic import Field

from .context import DecodeContext
from .protocol import Decoder, DecoderParams, cap, ranked_or_raise, register
from .sample import candidate
from .types import DecodeRequest, DecoderError, DecodeResult


class BestOfNParams(DecoderParams):
    num_candidates: int = Field(4, ge=1, le=4096, json_schema_extra=cap("max_candidates"))
    """N, the number of samples drawn and scored. The request's ``n`` best of them are returned."""


@register("best_of_n")
class BestOfN(Decoder[BestOfNParams]):
    """Draw N samples with the request's sampling settings, score them with the reward, return the argmax.

    Ties go to the lowest index. Sampling uses the request's temperature (1.0 unless set: the theory assumes
    samples from the model itself), top_p, max_tokens, stop and seed.

    >>> BestOfN(BestOfNParams(num_candidates=8)).params.num_candidates
    8
    """

    requires_reward = True
    description = "Sample N candidates in one engine call, score all in one reward call, return the best."

    def validate(self, request: DecodeRequest) -> None:
        if request.n > self.params.num_candidates:
            raise DecoderError(
                f"n={request.n} answers were asked for but only num_candidates={self.params.num_candidates} are "
                "drawn; raise decoder.num_candidates or lower n",
                "n",
            )

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        with ctx.phase("generate"):
            [gen] = await ctx.engine.generate(
                [request.prompt_token_ids],
                request.sampling.but(n=self.params.num_candidates),
                request.request_id,
            )
        candidates = [candidate(c) for c in gen.completions]
        await ctx.score(request.prompt, candidates)
        return ctx.result(request, ranked_or_raise(candidates, request.n), candidates)
