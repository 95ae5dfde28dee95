"""A scripted engine for unit tests: a character-level "language model" whose log-probs the test chooses.

Tokens are single characters (id = position in ``vocab``; id 0 is EOS, rendered as ""). The model is a
function from the token prefix to a ``{token: logprob}`` table, so a test can compute by hand what greedy,
sampling, best-of-N or a search decoder must return. ``samples`` scripts sampled completions directly, for
decoders whose test only cares about what was drawn. Every call is recorded in ``calls``.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from alignd.engines.protocol import (
    Completion,
    EngineInfo,
    EngineRequestError,
    Generation,
    SamplingConfig,
    StreamDelta,
)

LM = Callable[[tuple[int, ...]], dict[int, float]]


class CharTokenizer:
    """Tokenizer over a fixed character vocabulary; id 0 is EOS."""

    def __init__(self, vocab: str):
        self.vocab = "\0" + vocab
        self.eos_token_id = 0
        self.has_chat_template = True

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return [self.vocab.index(ch) for ch in text]

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return "".join(self.vocab[t] for t in token_ids if t != 0)

    def token_to_str(self, token_id: int) -> str:
        return "" if token_id == 0 else self.vocab[token_id]

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True, tools=None) -> str:
        return "".join(m["content"] for m in messages)


def uniform_lm(vocab_size: int) -> LM:
    """Every token (EOS included) equally likely."""
    lp = -math.log(vocab_size)
    return lambda prefix: {t: lp for t in range(vocab_size)}


@dataclass
class Call:
    method: str
    prompts: list[list[int]]
    params: SamplingConfig | None
    request_id: str
    session: str | None = None


@dataclass
class ScriptedEngine:
    """A deterministic :class:`~alignd.engines.protocol.Engine` for hand-computed tests."""

    vocab: str = "abcdefgh "
    lm: LM | None = None
    samples: list[str] | None = None
    """If set, ``generate`` returns these texts (cycled) as the n samples, ignoring ``lm``."""
    answers: list[str] | None = None
    """If set, whole answers that prompts continue: a prompt is ``base`` plus the start of some answers, and the
    n samples are the next ``max_tokens`` characters of those answers, in order (cycled); an answer's end is EOS.
    Blockwise and speculative decoders continue candidates this way."""
    base: str = ""
    """The request's own prompt text, in ``answers`` mode."""
    max_model_len: int = 256
    calls: list[Call] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.tokenizer = CharTokenizer(self.vocab)
        size = len(self.tokenizer.vocab)
        self.lm = self.lm or uniform_lm(size)
        self.info = EngineInfo(name="scripted", max_model_len=self.max_model_len, vocab_size=size, max_logprobs=20)

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def check_health(self) -> None: ...

    def _continue(self, prompt: Sequence[int], params: SamplingConfig, index: int) -> Completion:
        done = self.tokenizer.decode(prompt)[len(self.base) :]
        matching = [a for a in self.answers or [] if a.startswith(done)]
        assert matching, f"no scripted answer continues {done!r}"
        rest = matching[index % len(matching)][len(done) :]
        ids = self.tokenizer.encode(rest)[: params.max_tokens]
        finish = "length" if len(ids) == params.max_tokens else "stop"
        text, reason = self.tokenizer.decode(ids), None
        hits = [(text.index(s), s) for s in params.stop if s in text]
        if hits:  # cut at the first stop string, keeping it if asked, as vLLM does
            at, reason = min(hits)
            text = text[: at + (len(reason) if params.include_stop_str_in_output else 0)]
            ids, finish = self.tokenizer.encode(text), "stop"
        return Completion(index=index, text=text, token_ids=ids, finish_reason=finish, stop_reason=reason)

    def _complete(self, prompt: Sequence[int], params: SamplingConfig, index: int, rng: random.Random) -> Completion:
        if self.samples is not None:
            text = self.samples[index % len(self.samples)]
            ids = self.tokenizer.encode(text)[: params.max_tokens]
            finish = "length" if len(ids) == params.max_tokens else "stop"
            return Completion(index=index, text=self.tokenizer.decode(ids), token_ids=ids, finish_reason=finish)
        prefix = list(prompt)
        out: list[int] = []
        lps: list[float] = []
        tops: list[dict[int, float]] = []
        finish = "length"
        for _ in range(params.max_tokens):
            table = self.lm(tuple(prefix))
            if params.greedy:
                token = max(sorted(table), key=lambda t: table[t])
            else:
                weights = [math.exp(table[t] / params.temperature) for t in sorted(table)]
                token = rng.choices(sorted(table), weights)[0]
            k = params.logprobs or 0
            ranked = sorted(table, key=lambda t: (-table[t], t))
            row = {t: table[t] for t in ranked[:k]}
            row[token] = table[token]
            for t in params.logprob_token_ids:
                row[t] = table.get(t, -math.inf)
            lps.append(table[token])
            tops.append(row)
            if token == 0 and not params.ignore_eos:
                finish = "stop"
                break
            out.append(token)
            prefix.append(token)
            text = self.tokenizer.decode(out)
            hit = next((s for s in params.stop if s in text), None)
            if hit is not None:
                out_text = text[: text.index(hit)]
                out = self.tokenizer.encode(out_text)
                finish = "stop"
                break
        want = params.logprobs is not None or bool(params.logprob_token_ids)
        return Completion(
            index=index,
            text=self.tokenizer.decode(out),
            token_ids=out,
            finish_reason=finish,
            logprobs=lps if want else None,
            top_logprobs=tops if want else None,
            cumulative_logprob=sum(lps),
        )

    async def generate(self, prompts, params: SamplingConfig, request_id: str, *, session=None) -> list[Generation]:
        self.calls.append(Call("generate", [list(p) for p in prompts], params, request_id, session))
        gens = []
        for i, prompt in enumerate(prompts):
            if len(prompt) + params.max_tokens > self.max_model_len:
                raise EngineRequestError("too long", param="max_tokens")
            rng = random.Random(hash((params.seed, i)) if params.seed is not None else None)
            # in answers mode, the i-th prompt's j-th sample continues the (i + j)-th answer that fits it
            comps = [
                self._continue(prompt, params, i + j)
                if self.answers is not None
                else self._complete(prompt, params, j, rng)
                for j in range(params.n)
            ]
            gens.append(Generation(prompt_token_ids=list(prompt), completions=comps))
        return gens

    async def stream(
        self, prompt, params: SamplingConfig, request_id: str, *, session=None
    ) -> AsyncIterator[StreamDelta]:
        [gen] = await self.generate([prompt], params, request_id, session=session)
        for c in gen.completions:
            for k, t in enumerate(c.token_ids):
                last = k == len(c.token_ids) - 1
                yield StreamDelta(
                    index=c.index,
                    text=self.tokenizer.decode([t]),
                    token_ids=[t],
                    logprobs=c.logprobs[k : k + 1] if c.logprobs is not None else None,
                    top_logprobs=c.top_logprobs[k : k + 1] if c.top_logprobs is not None else None,
                    finish_reason=c.finish_reason if last else None,
                )

    async def continuation_logprobs(
        self, prompts, continuations, request_id: str, *, session=None
    ) -> list[list[float]]:
        self.calls.append(Call("continuation_logprobs", [list(p) for p in prompts], None, request_id, session))
        out = []
        for prompt, cont in zip(prompts, continuations):
            prefix = list(prompt)
            values = []
            for t in cont:
                values.append(self.lm(tuple(prefix)).get(t, -math.inf))
                prefix.append(t)
            out.append(values)
        return out

    async def abort(self, request_ids) -> None:
        self.aborted.extend(request_ids)
