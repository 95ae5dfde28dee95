"""``sample``: exactly what the engine returns (the pass-through decoder, and the OpenAI endpoints' default)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..engines.protocol import StreamDelta
from .context import DecodeContext
from .protocol import Decoder, DecoderParams, register
from .types import Candidate, Cost, DecodeRequest, DecodeResult


@register("sample")
class Sample(Decoder[DecoderParams]):
    """Sample ``n`` answers in one engine call with the request's sampling settings.

    If the request names a reward, the answers are scored too (for inspection); selection is untouched.
    """

    streams_tokens = True
    structured_output = True
    description = "Plain sampling from the served model: the request's n, temperature, top_p, seed, stop, logprobs."

    def worst_case(self, request: DecodeRequest) -> Cost:
        return Cost(len(request.prompt_token_ids) + request.n * request.sampling.max_tokens, "n", "n x max_tokens")

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        with ctx.phase("generate"):
            [gen] = await ctx.engine.generate(
                [request.prompt_token_ids], request.sampling.but(n=request.n), request.request_id
            )
        choices = [Candidate.of(c) for c in gen.completions]
        await ctx.score(request.prompt, choices)
        return ctx.result(request, choices, choices)

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        request = self.prepare(request, ctx.engine, ctx.rewards)
        texts: dict[int, list[str]] = {}
        tokens: dict[int, list[int]] = {}
        finish: dict[int, str | None] = {}
        with ctx.phase("generate"):
            async for delta in ctx.engine.stream(
                request.prompt_token_ids, request.sampling.but(n=request.n), request.request_id
            ):
                texts.setdefault(delta.index, []).append(delta.text)
                tokens.setdefault(delta.index, []).extend(delta.token_ids)
                finish[delta.index] = delta.finish_reason
                yield delta
        choices = [
            Candidate(index=i, text="".join(texts.get(i, [])), token_ids=tokens.get(i, []), finish_reason=finish.get(i))
            for i in range(request.n)
        ]
        await ctx.score(request.prompt, choices)
        yield ctx.result(request, choices, choices)
