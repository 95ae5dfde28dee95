"""``deal``: DeAL heuristic search (Huang et al. 2024, "DeAL: Decoding-time Alignment for Large Language Models",
arXiv 2402.06147); see the decoders page of the docs.

Decoding as search: the state is the token prefix, an action appends a token. Each step takes the top-k next
tokens of the model for each of the b kept states, extends each by a greedy lookahead of l tokens (shorter at
EOS), scores c = log pi(prefix + token) + lambda * h(prefix + token + lookahead) with the alignment heuristic h (the
request's rewards: reward models, keyword coverage, length bounds...) and keeps the best b. The paper reports
22-55x slowdowns over greedy decoding; here all k*b lookaheads of a step are ONE engine call (sharing their
prefix through the prefix cache), all are scored in ONE reward call, and the next step's top-k is read from the
chosen lookahead's log-probs, so a token-level step costs one engine call and one reward call.

``commit=segment`` commits the best token and its whole lookahead at once (far fewer steps). ``instruction``
prepends an alignment instruction to the prompt (the paper's start-state adaptation). With k = 1, or lambda = 0
and b = 1, DeAL is greedy decoding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Literal

from pydantic import Field

from ..engines.protocol import EngineInfo, StreamDelta, Tokenizer
from .context import DecodeContext
from .protocol import DecoderParams, StreamingDecoder, cap, check_top_k, register
from .search import SearchPath, apply_stops, commit, extend, fill_top_k, propose, scored, to_candidate
from .types import Cost, DecodeRequest, DecoderError, DecodeResult


class DeALParams(DecoderParams):
    top_k: int = Field(10, ge=1, le=64, json_schema_extra=cap("max_logprobs"))
    """k, next tokens considered per state and step."""
    lookahead: int = Field(16, ge=0, le=1024, json_schema_extra=cap("max_tokens"))
    """l, greedy lookahead tokens per candidate (fewer at EOS or at the end of max_tokens)."""
    beam: int = Field(1, ge=1, le=16, json_schema_extra=cap("max_candidates"))
    """b, states kept per step."""
    weight: float = Field(1.0, ge=0.0, le=1000.0)
    """lambda, weight of the heuristic against the prefix log-prob."""
    commit: Literal["token", "segment"] = "token"
    """``token``: one token per step, as in the paper; ``segment``: the best token and its whole lookahead."""
    instruction: str | None = Field(None, max_length=4000)
    """An alignment instruction prepended to the prompt (a system message for chats)."""


def with_instruction(request: DecodeRequest, tok: Tokenizer, instruction: str | None) -> DecodeRequest:
    """The request with an alignment instruction prepended (start-state adaptation)."""
    if not instruction:
        return request
    if isinstance(request.prompt, list):
        messages = [{"role": "system", "content": instruction}] + list(request.prompt)
        ids = tok.encode(tok.apply_chat_template(messages), add_special_tokens=False)
    else:
        ids = tok.encode(f"{instruction}\n\n{request.prompt}", add_special_tokens=True)
    return replace(request, prompt_token_ids=ids)


@register("deal")
class DeAL(StreamingDecoder[DeALParams]):
    """DeAL: top-k proposals, greedy lookahead, prefix log-prob + lambda * heuristic, beam of b states."""

    structured_output = True
    continues_prefix = True
    requires_reward = True
    streams_tokens = True
    description = "DeAL heuristic search: top-k tokens, greedy lookahead, log-prob + lambda * reward, beam b."

    anytime = True

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        if request.n > self.params.beam:
            raise DecoderError(f"n={request.n} is more than beam={self.params.beam}", "n")
        check_top_k(self.params.top_k, engine)

    def step_cost(self) -> int:
        """Engine tokens of one step at most: k*b lookaheads, each one new prompt token and l generated."""
        p = self.params
        return p.top_k * p.beam * (p.lookahead + 1) + p.beam

    def worst_case(self, request: DecodeRequest) -> Cost:
        p = self.params
        ratios = {"decoder.lookahead": p.lookahead / 16, "decoder.top_k": p.top_k / 10, "decoder.beam": p.beam}
        prompt = len(request.prompt_token_ids)
        return Cost(
            prompt + request.sampling.max_tokens * self.step_cost(),
            max(ratios, key=lambda k: ratios[k]),
            "top_k x beam x (lookahead + 1) tokens per step, up to max_tokens steps",
            unit=prompt + self.step_cost(),
        )

    def render(self, request: DecodeRequest, tokenizer: Tokenizer) -> DecodeRequest:
        return with_instruction(request, tokenizer, self.params.instruction)

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        p = self.params
        request = self.prepare(request, ctx.engine, ctx.rewards)
        engine, tok = ctx.engine, ctx.engine.tokenizer
        eos = tok.eos_token_id
        stops = request.sampling.stop
        max_tokens = request.sampling.max_tokens
        paths = [SearchPath()]
        finished: list[SearchPath] = []
        streamed = 0
        step = 0
        while paths:
            if step and not ctx.affordable(self.step_cost()):
                for path in paths:
                    path.finished = "budget"  # cut short by the request's budget, not by max_tokens
                break
            with ctx.phase("expand"):
                await fill_top_k(engine, request, paths, p.top_k, f"s{step}-topk")
            proposals = propose(paths, p.top_k, ctx, request)
            room = max_tokens - max(len(x.tokens) for x in paths) - 1
            with ctx.phase("lookahead"):
                await extend(
                    engine,
                    request,
                    proposals,
                    min(p.lookahead, room),
                    temperature=0.0,
                    logprobs=p.top_k,
                    tag=f"s{step}",
                    eos=eos,
                )
            texts = [tok.decode(pr.tokens) for pr in proposals]
            scores = await ctx.score_texts(request.prompt, texts)
            ranked = []
            for i in scored(scores.total, scores):  # proposals the reward dropped take no part
                pr = proposals[i]
                extra = len(pr.extension.token_ids) if p.commit == "segment" and pr.extension is not None else 0
                path = commit(pr, request, eos, extra)
                path.score = path.logprob + p.weight * scores.total[i]
                ranked.append(path)
            ranked.sort(key=lambda x: x.score, reverse=True)  # stable: ties keep proposal order
            kept = ranked[: p.beam]
            for path in kept:
                text = tok.decode(path.tokens)
                apply_stops(path, text, stops)
            finished.extend(x for x in kept if x.finished)
            paths = [x for x in kept if not x.finished]
            if p.beam == 1:  # one state: its newly committed tokens are final, stream them now
                best = kept[0]
                new = best.tokens[streamed:]
                if new or best.finished:
                    yield StreamDelta(index=0, text=tok.decode(new), token_ids=new, finish_reason=best.finished)
                    streamed = len(best.tokens)
            step += 1
        if p.beam == 1 and paths and paths[0].finished == "budget":
            yield StreamDelta(index=0, text="", token_ids=[], finish_reason="budget")
        pool = sorted(finished + paths, key=lambda x: x.score, reverse=True)
        for path in pool:
            path.finished = path.finished or "length"
        candidates = [to_candidate(i, path, ctx, stops) for i, path in enumerate(pool)]
        await ctx.score(request.prompt, candidates)
        yield ctx.result(request, candidates[: request.n], candidates, steps=step)
