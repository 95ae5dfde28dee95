"""``urial``: URIAL in-context alignment (Lin et al. 2023, "The Unlocking Spell on Base LLMs", arXiv 2312.01552).

A base (untuned) model is aligned by a constant prefix instead of fine-tuning: an instruction stating the
assistant's principles, then a few stylistic example conversations, every turn a ``# Query:`` or ``# Answer:``
block with the message between triple backticks. The request's conversation follows in the same format and ends
with an open ``# Answer:`` block, which the model completes::

    # Instruction ...principles...          } the prompt file: the same text for every request, so vLLM
    # Query: / # Answer: example blocks     } prefills it once and serves it from its prefix cache afterwards
    # Query: / # Answer: earlier turns
    # Query:
    ```
    <the last user message>
    ```

    # Answer:
    ```

The prompt file (default ``decoders/prompts/urial.md``; the operator may set ``decoder_options.urial.prompt_file``)
is plain text: everything before its first line reading exactly ``# Query:`` is the instruction, the rest is the
example blocks, copied verbatim. The conversation's blocks are appended by code, separated by blank lines. A
system message from the request is appended to the instruction as its own paragraph, so requests with a system
message share the cache only up to the end of the instruction (and fully with requests carrying the same one).
Message contents are stripped, so the text after each block's opening ``` + newline starts with a non-space
character: no BPE merge crosses from the constant part into the user's text, and the prefix tokenizes the same
for every query.

Decoding stops at ``# Query``, ``# User`` and ``` (the closing backticks), added to the request's own stop
strings; the answer is cut at the first of them and stripped of surrounding whitespace, also on engines that do
not apply stop strings, and also while streaming (:class:`AnswerStream`).

Sampling follows the paper: ``mode=greedy`` (temperature 0) with repetition penalty 1.1, or ``mode=sample`` at
the decoder's ``temperature`` (0.3). The temperature and repetition penalty are the decoder's, never the
request's: the server fills an unset request temperature with 1.0, so a decoder cannot tell whether the client
chose it. Everything else (``max_tokens``, ``seed``, ``top_p``/``top_k``/``min_p``, whose defaults are the paper's
top_p 1, other penalties, ``logprobs``, ``stop``) is the request's. Greedy decoding gives one answer, so
``n > 1`` needs ``mode=sample``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..engines.protocol import EngineInfo, SamplingConfig, StreamDelta, Tokenizer
from ..rewards.protocol import Prompt
from .context import DecodeContext
from .protocol import Decoder, DecoderParams, register
from .types import Candidate, Cost, DecodeRequest, DecoderError, DecodeResult

DEFAULT_PROMPT_FILE = Path(__file__).parent / "prompts" / "urial.md"
STOPS: tuple[str, ...] = ("# Query", "# User", "```")
"""Where an answer ends: the next turn's header, or the closing backticks of its own block."""

_QUERY_LINE = re.compile(r"^# Query:[ \t]*$", re.M)
_ANSWER_LINE = re.compile(r"^# Answer:[ \t]*$", re.M)


class UrialParams(DecoderParams):
    mode: Literal["greedy", "sample"] = "greedy"
    """``greedy`` (temperature 0, the paper's default; one answer) or ``sample`` at ``temperature``."""
    temperature: float = Field(0.3, ge=0.01, le=2.0)
    """Temperature of ``mode=sample`` (the request's temperature is not used)."""
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0)
    """vLLM's repetition penalty, 1.1 as in the paper (replaces the request's)."""


class UrialOptions(DecoderParams):
    prompt_file: str | None = None
    """A replacement prompt file (instruction, then example blocks: see the module doc); default: the shipped one."""

    @field_validator("prompt_file")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        # Read it now so a wrong path or a malformed file fails at server start, not on the first request.
        if value is not None:
            load_prompt(value)
        return value


@dataclass(frozen=True, slots=True)
class UrialPrompt:
    """A parsed prompt file: the instruction text and the example blocks that follow it (both stripped)."""

    instruction: str
    examples: str


def parse_prompt(text: str) -> UrialPrompt:
    """Split a prompt file at its first ``# Query:`` line into instruction and examples; check the blocks pair up.

    >>> p = parse_prompt("Be kind.\\n\\n# Query:\\n```\\nHi\\n```\\n\\n# Answer:\\n```\\nHello!\\n```\\n")
    >>> p.instruction, p.examples.splitlines()[0], p.examples.endswith("Hello!\\n```")
    ('Be kind.', '# Query:', True)
    """
    first = _QUERY_LINE.search(text)
    instruction, examples = (text[: first.start()], text[first.start() :]) if first else (text, "")
    queries, answers = len(_QUERY_LINE.findall(examples)), len(_ANSWER_LINE.findall(examples))
    if queries != answers:
        raise ValueError(f"the URIAL prompt has {queries} '# Query:' blocks but {answers} '# Answer:' blocks")
    prompt = UrialPrompt(instruction.strip(), examples.strip())
    if not prompt.instruction and not prompt.examples:
        raise ValueError("the URIAL prompt file is empty")
    return prompt


@lru_cache(maxsize=16)
def _parse_file(path: str, mtime_ns: int, size: int) -> UrialPrompt:
    # Keyed on mtime and size too, so an operator who edits the file in place gets the new prefix.
    return parse_prompt(Path(path).read_text(encoding="utf-8"))


def load_prompt(path: str | Path | None = None) -> UrialPrompt:
    """The parsed prompt file at ``path`` (default: the shipped one), re-read only when the file changes."""
    file = Path(path).expanduser() if path is not None else DEFAULT_PROMPT_FILE
    try:
        stat = file.stat()
    except OSError as exc:
        raise ValueError(f"cannot read the URIAL prompt file {str(file)!r}: {exc.strerror}") from None
    return _parse_file(str(file), stat.st_mtime_ns, stat.st_size)


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts, when a decoder is called without the server
        content = "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    return str(content or "").strip()


def _block(header: str, text: str) -> str:
    return f"# {header}:\n```\n{text}\n```"


def render(prompt: UrialPrompt, conversation: Prompt) -> str:
    """The URIAL text for a plain prompt (one user message) or a chat: prefix, the turns as blocks, an open answer.

    >>> print(render(UrialPrompt("# Instruction\\n\\nBe kind.", ""), "Hi"))
    # Instruction
    <BLANKLINE>
    Be kind.
    <BLANKLINE>
    # Query:
    ```
    Hi
    ```
    <BLANKLINE>
    # Answer:
    ```
    <BLANKLINE>
    """
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else list(conversation)
    system: list[str] = []
    turns: list[str] = []
    last = None
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            if text := _content(message):
                system.append(text)
        elif role in ("user", "assistant"):
            turns.append(_block("Query" if role == "user" else "Answer", _content(message)))
            last = role
        else:
            raise DecoderError(f"urial renders system, user and assistant messages, not {role!r} ones", "messages")
    if last != "user":
        raise DecoderError("urial needs the conversation to end with a user message", "messages")
    head = "\n\n".join(part for part in (prompt.instruction, *system) if part)
    parts = [part for part in (head, prompt.examples) if part]
    return "\n\n".join([*parts, *turns, "# Answer:\n```\n"])


def clean(text: str) -> str:
    """The answer: ``text`` cut at the first stop string (a leaked next turn, closing backticks), then stripped.

    >>> clean("  Paris.\\n```\\n\\n# Query:\\n```\\nAnd Spain?")
    'Paris.'
    """
    cut = min((i for stop in STOPS if (i := text.find(stop)) != -1), default=len(text))
    return text[:cut].strip()


class AnswerStream:
    """:func:`clean` applied incrementally to one streamed answer: the emitted chunks join to ``clean(full text)``.

    Leading whitespace is dropped; trailing whitespace and any tail that could be the start of a stop string are
    held back until the next chunk shows what they are, and everything from the first stop string on is dropped.

    >>> s = AnswerStream()
    >>> [s.feed(chunk) for chunk in ["\\nHel", "lo \\n`", "``\\n# Query"]], s.text
    (['Hel', 'lo', ''], 'Hello')
    """

    def __init__(self) -> None:
        self.text = ""
        """What has been emitted so far."""
        self.done = False
        self._held = ""

    def feed(self, chunk: str, *, final: bool = False) -> str:
        """Take the next raw chunk; return the text that may be shown now (all of the rest if ``final``)."""
        if self.done:
            return ""
        held = self._held + chunk
        if not self.text:
            held = held.lstrip()
        cut = min((i for stop in STOPS if (i := held.find(stop)) != -1), default=-1)
        if cut != -1 or final:
            out, self._held, self.done = (held[:cut] if cut != -1 else held).rstrip(), "", True
        else:
            keep = _safe_length(held)
            out, self._held = held[:keep], held[keep:]
        self.text += out
        return out


def _safe_length(text: str) -> int:
    """Length of the head of ``text`` that neither a later stop string nor strip() can change."""
    end = len(text)
    for start in range(max(0, len(text) - max(map(len, STOPS)) + 1), len(text)):
        tail = text[start:]
        if any(stop.startswith(tail) for stop in STOPS):
            end = start
            break
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


@register("urial")
class Urial(Decoder[UrialParams]):
    """URIAL: answer as the (base) model continues a constant principles + examples prefix around the chat.

    One engine call with ``n`` samples on the re-rendered prompt (``request.prompt_token_ids``, built with the
    model's chat template, are not used); answers are cleaned of the block syntax and, if the request names a
    reward, scored for inspection. Streams tokens as the engine produces them.

    >>> Urial().text("Hi").endswith("# Query:\\n```\\nHi\\n```\\n\\n# Answer:\\n```\\n")
    True
    """

    Options = UrialOptions
    options: UrialOptions
    requires_reward = False
    streams_tokens = True
    structured_output = True
    description = (
        "URIAL in-context alignment for base models: a constant prefix of principles and three example "
        "conversations (served from the prefix cache), greedy with repetition penalty 1.1."
    )

    def text(self, conversation: Prompt) -> str:
        """The text the engine sees for ``conversation`` with this decoder's prompt file."""
        return render(load_prompt(self.options.prompt_file), conversation)

    def worst_case(self, request: DecodeRequest) -> Cost:
        return Cost(len(request.prompt_token_ids) + request.n * request.sampling.max_tokens, "n", "n x max_tokens")

    def validate(self, request: DecodeRequest, engine: EngineInfo) -> None:
        if self.params.mode == "greedy" and request.n > 1:
            raise DecoderError(f"greedy URIAL gives one answer, not n={request.n}: set decoder.mode to 'sample'", "n")

    def sampling(self, base: SamplingConfig, n: int) -> SamplingConfig:
        """The request's sampling settings with URIAL's temperature, repetition penalty and stop strings."""
        p = self.params
        return base.but(
            n=n,
            temperature=0.0 if p.mode == "greedy" else p.temperature,
            repetition_penalty=p.repetition_penalty,
            stop=tuple(dict.fromkeys((*base.stop, *STOPS))),
        )

    def render(self, request: DecodeRequest, tokenizer: Tokenizer) -> DecodeRequest:
        """``request`` with the URIAL prompt's tokens and sampling settings (the chat-template rendering is not
        used); kept as the request the result reports, so usage.prompt_tokens counts what the model really read."""
        ids = tokenizer.encode(self.text(request.prompt), add_special_tokens=True)
        return replace(request, prompt_token_ids=ids, sampling=self.sampling(request.sampling, request.n))

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        urial = self.prepare(request, ctx.engine, ctx.rewards)
        with ctx.phase("generate"):
            [gen] = await ctx.engine.generate([urial.prompt_token_ids], urial.sampling, urial.request_id)
        choices = [Candidate.of(c) for c in gen.completions]
        for c in choices:
            c.text = clean(c.text)
        await ctx.score(urial.prompt, choices)
        return ctx.result(urial, choices, choices)

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        urial = self.prepare(request, ctx.engine, ctx.rewards)
        answers = [AnswerStream() for _ in range(urial.n)]
        tokens: dict[int, list[int]] = {}
        finish: dict[int, str | None] = {}
        with ctx.phase("generate"):
            async for delta in ctx.engine.stream(urial.prompt_token_ids, urial.sampling, urial.request_id):
                tokens.setdefault(delta.index, []).extend(delta.token_ids)
                finish[delta.index] = delta.finish_reason
                text = answers[delta.index].feed(delta.text, final=delta.finish_reason is not None)
                # Token ids and log-probs go out as generated; only the text is held back or trimmed.
                yield replace(delta, text=text)
        for i, answer in enumerate(answers):
            if not answer.done and (rest := answer.feed("", final=True)):
                yield StreamDelta(index=i, text=rest, token_ids=[])
        choices = [
            Candidate(index=i, text=a.text, token_ids=tokens.get(i, []), finish_reason=finish.get(i))
            for i, a in enumerate(answers)
        ]
        await ctx.score(urial.prompt, choices)
        yield ctx.result(urial, choices, choices)
