"""``diverse_beam``: diverse beam search (Vijayakumar et al. 2016, "Diverse Beam Search:
Decoding Diverse Solutions from Neural Sequence Models", arXiv 1610.02424); see the decoders page of the docs.

B beams in G groups of g = B/G. Each step visits the groups in order; group 1 is plain beam search and group j
ranks its candidates by log p - lambda * Delta, where Delta(token) counts how often groups 1..j-1 chose that token
at this step (Hamming diversity); the penalty accumulates in the group's beam scores, as in the paper's objective.

Within a group the search is exactly vLLM's ``LLM.beam_search`` (the test oracle): every alive beam proposes its
top 2g next tokens, candidates ending in EOS join the finished list, the best g others survive, scores are
cumulative log-probs divided by (prompt + generated tokens) ** length_penalty, and at the end the finished and
alive beams are ranked together. With G = 1, or lambda = 0 (each group then equals a width-g beam search), the
beams are vLLM's. All beams of a group are expanded in ONE engine call (one token, top-k log-probs), reading
their shared prefixes from the prefix cache.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pydantic import Field, model_validator

from ..engines.protocol import EngineInfo, SamplingConfig
from .context import DecodeContext
from .protocol import Decoder, DecoderParams, cap, register
from .search import next_row
from .types import Candidate, Cost, DecodeRequest, DecoderError, DecodeResult


class DiverseBeamParams(DecoderParams):
    beam_width: int = Field(4, ge=1, le=64, json_schema_extra=cap("max_candidates"))
    """B, beams in total (all returned, ranked)."""
    groups: int = Field(4, ge=1, le=64)
    """G, groups of B/G beams; B must be divisible by G. G = 1 is plain beam search."""
    diversity_penalty: float = Field(0.5, ge=0.0, le=100.0)
    """lambda, subtracted per earlier-group use of the same token at the same step."""
    length_penalty: float = Field(1.0, ge=-10.0, le=10.0)
    """Beam score = cumulative log-prob / (sequence length ** length_penalty), as in vLLM's beam search."""
    rescore: bool = False
    """Rank the final beams by the request's reward instead of their beam score."""

    @model_validator(mode="after")
    def _divisible(self) -> DiverseBeamParams:
        if self.beam_width % self.groups:
            raise ValueError(f"beam_width ({self.beam_width}) must be divisible by groups ({self.groups})")
        return self


@dataclass(slots=True)
class _Beam:
    tokens: list[int]  # generated tokens only
    logprob: float = 0.0  # cumulative model log-prob
    diverse: float = 0.0  # cumulative log-prob minus the diversity penalties (what the group optimises)
    finished: bool = False
    group: int = 0
    token_logprobs: list[float] = field(default_factory=list)


def beam_score(value: float, prompt_len: int, tokens: list[int], eos: int | None, length_penalty: float) -> float:
    """vLLM's ``get_beam_search_score``: the length counts the prompt and excludes a final EOS."""
    seq_len = prompt_len + len(tokens)
    if tokens and tokens[-1] == eos:
        seq_len -= 1
    return value / (max(seq_len, 1) ** length_penalty)


@register("diverse_beam")
class DiverseBeam(Decoder[DiverseBeamParams]):
    """Diverse beam search over the served model; returns all B beams ranked, each with its score."""

    structured_output = True
    continues_prefix = True
    description = "Diverse beam search: B beams in G groups with a Hamming diversity penalty between groups."

    def needs_reward(self) -> bool:
        return self.params.rescore

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        if request.n > self.params.beam_width:
            raise DecoderError(f"n={request.n} is more than beam_width={self.params.beam_width}", "n")

    def worst_case(self, request: DecodeRequest) -> Cost:
        # Every step expands each beam by one token: one new prompt token and one generated token per beam.
        b = self.params.beam_width
        tokens = len(request.prompt_token_ids) + 2 * b * request.sampling.max_tokens
        return Cost(tokens, "decoder.beam_width", "2 x beam_width x max_tokens")

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        p = self.params
        g = p.beam_width // p.groups
        request = self.prepare(request, ctx.engine, ctx.rewards)
        k_needed = 2 * g + (p.beam_width - g if p.groups > 1 and p.diversity_penalty > 0 else 0)
        k = min(k_needed, ctx.engine.info.max_logprobs)
        if k < 2 * g:
            raise DecoderError(
                f"beam search needs {2 * g} log-probs per step but the engine allows {ctx.engine.info.max_logprobs}; "
                "raise the engine's max_logprobs or lower beam_width/groups",
                "decoder.beam_width",
            )
        eos = ctx.engine.tokenizer.eos_token_id
        prompt = request.prompt_token_ids
        plen = len(prompt)
        alive: list[list[_Beam]] = [[_Beam([], group=j)] for j in range(p.groups)]
        done: list[list[_Beam]] = [[] for _ in range(p.groups)]
        step_params = request.continued(
            SamplingConfig(max_tokens=1, temperature=0.0, logprobs=k, skip_special_tokens=False)
        )

        def key(b: _Beam, attr: str = "diverse") -> float:
            return beam_score(getattr(b, attr), plen, b.tokens, eos, p.length_penalty)

        for step in range(request.sampling.max_tokens):
            chosen_here: Counter[int] = Counter()
            for j in range(p.groups):
                beams = alive[j]
                if not beams:
                    continue
                with ctx.phase("expand"):
                    gens = await ctx.engine.generate(
                        [prompt + b.tokens for b in beams], step_params, f"{request.request_id}-s{step}-g{j}"
                    )
                fresh: list[_Beam] = []
                for beam, gen in zip(beams, gens):
                    completion = gen.completions[0]
                    if completion.finish_reason == "abort":
                        raise DecoderError("an engine step was aborted", "decoder")
                    row = ctx.shaped(request, beam.tokens, next_row(completion, 0, request))
                    # Rank this beam's proposals by the penalised score; keep its top 2g as vLLM keeps its top 2B.
                    proposals = sorted(
                        row.items(), key=lambda kv: kv[1] - p.diversity_penalty * chosen_here[kv[0]], reverse=True
                    )[: 2 * g]
                    for token, lp in proposals:
                        penalty = p.diversity_penalty * chosen_here[token]
                        new = _Beam(
                            beam.tokens + [token],
                            beam.logprob + lp,
                            beam.diverse + lp - penalty,
                            group=j,
                            token_logprobs=beam.token_logprobs + [lp],
                        )
                        if token == eos and not request.sampling.ignore_eos:
                            new.finished = True
                            done[j].append(new)
                        else:
                            fresh.append(new)
                fresh.sort(key=key, reverse=True)
                alive[j] = fresh[:g]
                chosen_here.update(b.tokens[-1] for b in alive[j])
            if not any(alive):
                break

        finals: list[_Beam] = []
        for j in range(p.groups):
            finals.extend(sorted(done[j] + alive[j], key=key, reverse=True)[:g])
        finals.sort(key=lambda b: key(b, "logprob"), reverse=True)
        candidates = [self._candidate(i, b, ctx, key(b, "logprob")) for i, b in enumerate(finals)]
        if p.rescore:
            await ctx.score(request.prompt, candidates)
            ranked = sorted(candidates, key=lambda c: float("-inf") if c.reward is None else c.reward, reverse=True)
        else:
            if ctx.rewards is not None:
                await ctx.score(request.prompt, candidates)
            ranked = candidates
        return ctx.result(request, ranked[: request.n], candidates)

    @staticmethod
    def _candidate(index: int, beam: _Beam, ctx: DecodeContext, score: float) -> Candidate:
        eos = ctx.engine.tokenizer.eos_token_id
        tokens = beam.tokens[:-1] if beam.finished and beam.tokens and beam.tokens[-1] == eos else beam.tokens
        return Candidate(
            index=index,
            text=ctx.engine.tokenizer.decode(tokens),
            token_ids=list(tokens),
            finish_reason="stop" if beam.finished else "length",
            score=score,
            logprobs=beam.token_logprobs[: len(tokens)],
        )
