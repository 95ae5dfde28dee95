"""Token-level search shared by DeAL, Transfer Q* and ARGS: propose the top-k next tokens, extend every proposal
(lookahead or rollout) in ONE engine call, score every extension in ONE reward call, commit.

The expensive parts are batched per step: all k*b extensions of a step go to the engine together, so vLLM
schedules them in the same forward passes and reads their shared prefix from the prefix cache, and the reward
sees all k*b texts at once. The top-k of the next step usually costs nothing: an extension generated with
``logprobs=k`` carries the model's distribution right after the proposed token, which is exactly the next
state's top-k when that proposal is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..engines.metering import MeteredEngine
from ..engines.protocol import Completion, SamplingConfig
from ..rewards.scoring import Scores
from .context import DecodeContext
from .protocol import all_dropped, softmax
from .types import Candidate, DecodeRequest


@dataclass(slots=True)
class SearchPath:
    """A partial answer: committed tokens, their log-prob under the policy, and its next-token top-k if known."""

    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    finished: str | None = None  # "stop" (EOS or a stop string) or "length"
    next_top: dict[int, float] | None = None
    score: float | None = None  # the search's value of this path when it was chosen
    token_logprobs: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Proposal:
    """One candidate of a step: a path, the proposed token, and (after extension) the extension's tokens."""

    parent: SearchPath
    token: int
    logprob: float
    extension: Completion | None = None

    @property
    def tokens(self) -> list[int]:
        """Committed tokens + the proposed token + the extension: what the reward scores."""
        ext = self.extension.token_ids if self.extension is not None else []
        return self.parent.tokens + [self.token] + list(ext)


def next_row(completion: Completion, position: int, request: DecodeRequest) -> dict[int, float]:
    """The top-k log-probs at ``position`` of a completion; under a structured-output shape, with the token the
    engine chose there added.

    The top-k are read before the grammar's mask (they may all be forbidden there), while the chosen token passed
    it: with it in the row, a shaped step always has a choice. Without a shape the row is the engine's top-k.

    >>> from alignd.engines.protocol import Constraint
    >>> shaped = DecodeRequest("r", [], "", SamplingConfig(constraint=Constraint.of("regex", "[a-z]+")))
    >>> c = Completion(0, "", [5, 6], None, logprobs=[-2.0, -0.1], top_logprobs=[{1: -0.5}, {6: -0.1}])
    >>> next_row(c, 0, shaped), next_row(c, 0, DecodeRequest("r", [], "", SamplingConfig()))
    ({1: -0.5, 5: -2.0}, {1: -0.5})
    """
    rows = completion.top_logprobs or []
    row = dict(rows[position]) if position < len(rows) else {}
    if request.sampling.constraint is None:
        return row
    if position < len(completion.token_ids) and completion.token_ids[position] not in row:
        lps = completion.logprobs or []
        if position < len(lps):
            row[completion.token_ids[position]] = lps[position]
    return row


def top_k(row: dict[int, float], k: int) -> list[tuple[int, float]]:
    """The k most likely tokens of a log-prob row, best first (ties: lower token id)."""
    return sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


async def fill_top_k(
    engine: MeteredEngine, request: DecodeRequest, paths: Sequence[SearchPath], k: int, tag: str
) -> None:
    """Give every unfinished path without one its next-token top-k, all in one engine call."""
    need = [p for p in paths if p.finished is None and p.next_top is None]
    if not need:
        return
    params = request.continued(SamplingConfig(max_tokens=1, temperature=0.0, logprobs=k, skip_special_tokens=False))
    gens = await engine.generate(
        [request.prompt_token_ids + p.tokens for p in need], params, f"{request.request_id}-{tag}"
    )
    for path, gen in zip(need, gens):
        path.next_top = next_row(gen.completions[0], 0, request)


def propose(paths: Sequence[SearchPath], k: int, ctx: DecodeContext, request: DecodeRequest) -> list[Proposal]:
    """The top-k proposals of every unfinished path, in path order then likelihood order, among the tokens that
    keep the request's structured-output shape (:meth:`DecodeContext.shaped`; all of them without one)."""
    out = []
    for path in paths:
        if path.finished is None:
            row = ctx.shaped(request, path.tokens, path.next_top or {})
            out.extend(Proposal(path, token, lp) for token, lp in top_k(row, k))
    return out


async def extend(
    engine: MeteredEngine,
    request: DecodeRequest,
    proposals: Sequence[Proposal],
    max_tokens: int,
    *,
    temperature: float,
    logprobs: int | None,
    tag: str,
    eos: int | None,
    seed: int | None = None,
) -> None:
    """Extend every proposal not ending in EOS by up to ``max_tokens`` tokens, in one engine call."""
    live = [p for p in proposals if p.token != eos or request.sampling.ignore_eos]
    if max_tokens <= 0 or not live:
        return
    params = request.continued(
        SamplingConfig(
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            stop=request.sampling.stop,
            stop_token_ids=request.sampling.stop_token_ids,
            logprobs=logprobs,
            skip_special_tokens=False,
        )
    )
    gens = await engine.generate(
        [request.prompt_token_ids + p.parent.tokens + [p.token] for p in live], params, f"{request.request_id}-{tag}"
    )
    for proposal, gen in zip(live, gens):
        proposal.extension = gen.completions[0]


def commit(proposal: Proposal, request: DecodeRequest, eos: int | None, extra: int = 0) -> SearchPath:
    """The path after committing the proposal's token and the first ``extra`` tokens of its extension.

    The new path's top-k comes from the extension's log-probs when it reaches one position further.
    """
    parent = proposal.parent
    ext = proposal.extension
    ext_ids = list(ext.token_ids[:extra]) if ext is not None else []
    ext_lps = list((ext.logprobs or [])[:extra]) if ext is not None else []
    if len(ext_lps) < len(ext_ids):  # extension generated without log-probs: its tokens' log-probs are unknown
        ext_lps += [0.0] * (len(ext_ids) - len(ext_lps))
    tokens = parent.tokens + [proposal.token] + ext_ids
    path = SearchPath(
        tokens=tokens,
        logprob=parent.logprob + proposal.logprob + sum(ext_lps),
        token_logprobs=parent.token_logprobs + [proposal.logprob] + ext_lps,
    )
    if not request.sampling.ignore_eos and eos is not None and eos in tokens[len(parent.tokens) :]:
        cut = tokens.index(eos, len(parent.tokens))
        path.tokens, path.token_logprobs = tokens[:cut], path.token_logprobs[:cut]
        path.finished = "stop"
    elif ext is not None and len(ext.token_ids) == extra and ext.finish_reason == "stop" and extra > 0:
        path.finished = "stop"  # the extension hit a stop string or token right where the commit ends
    elif len(path.tokens) >= request.sampling.max_tokens:
        path.finished = "length"
    if path.finished is None and ext is not None and ext.top_logprobs and len(ext.top_logprobs) > extra:
        path.next_top = next_row(ext, extra, request)
    return path


def apply_stops(path: SearchPath, text: str, stops: Sequence[str]) -> str:
    """Cut ``text`` at the first stop string and mark the path finished if one occurs."""
    hits = [text.index(s) for s in stops if s in text]
    if hits:
        path.finished = "stop"
        return text[: min(hits)]
    return text


def scored(values: Sequence[float | None], scores: Scores) -> list[int]:
    """Indices of the proposals a reward scored; if it dropped every one, :func:`all_dropped` says why."""
    kept = [i for i, v in enumerate(values) if v is not None]
    if not kept:
        raise all_dropped(scores.dropped.values())
    return kept


def softmax_sample(values: Sequence[float], temperature: float, rng) -> int:
    """Index drawn with probability proportional to exp(value / temperature)."""
    return rng.choices(range(len(values)), softmax(values, temperature))[0]


def to_candidate(index: int, path: SearchPath, ctx: DecodeContext, stops: Sequence[str]) -> Candidate:
    """A finished search path as a candidate answer."""
    text = apply_stops(path, ctx.engine.tokenizer.decode(path.tokens), stops)
    return Candidate(
        index=index,
        text=text,
        token_ids=list(path.tokens),
        finish_reason=path.finished or "length",
        score=path.score,
        logprobs=list(path.token_logprobs),
    )
