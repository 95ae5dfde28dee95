"""``urial``: URIAL in-context alignment (Lin et al. 2023, "The Unlocking Spell on Base LLMs", arXiv 2312.01552).

A base model is aligned by a constant prefix: an instruction stating the assistant's principles and three
stylistic example conversations, each turn a ``# Query:`` / ``# Answer:`` block with the message between triple
backticks. The user's conversation follows as further blocks, ending in an open ``# Answer:`` block; decoding
stops at ``# Query``, ``# User`` or the closing backticks, which are stripped from the answer.

The prefix is the prompt file itself (``decoders/prompts/urial.md``, our own three examples in URIAL's format;
the operator can point ``decoder_options.urial.prompt_file`` at another). Because it is byte-for-byte the same
for every request, vLLM prefills it once and serves it from the prefix cache afterwards (the answer's
``usage.engine_cached_tokens`` shows it). A request's system message is added after the prefix, so it does not
break the cached part.

Decoding follows the authors' runs: greedy with repetition penalty 1.1, or ``mode=sample`` at temperature 0.3,
top_p 1. The request's own temperature and top_p are not used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..engines.protocol import StreamDelta
from ..rewards.protocol import Prompt
from .protocol import DecodeContext, DecodeRequest, DecoderError, DecodeResult, DecoderParams, register
from .sample import Sample

DEFAULT_PROMPT_FILE = Path(__file__).with_name("prompts") / "urial.md"
STOPS = ("# Query", "# User", "```")


class UrialParams(DecoderParams):
    mode: Literal["greedy", "sample"] = "greedy"
    """``greedy`` (the paper's default) or ``sample`` at ``temperature``."""
    temperature: float = Field(0.3, gt=0.0, le=2.0)
    """Sampling temperature for ``mode=sample``."""
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0)
    """vLLM's repetition penalty; 1.1 as in the authors' runs."""


class UrialOptions(DecoderParams):
    prompt_file: str | None = None
    """A replacement prefix (instruction + example blocks, in the shipped file's format); default: the shipped one."""


@lru_cache(maxsize=8)
def _read_prefix(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def _block(title: str, text: str, *, close: bool = True) -> str:
    return f"# {title}:\n```\n{text.strip()}\n```" if close else f"# {title}:\n```\n"


def render(prefix: str, prompt: Prompt) -> str:
    """The URIAL prompt for a plain prompt or a chat: prefix, earlier turns as closed blocks, an open answer.

    >>> print(render("# Instruction\\n\\nBe nice.", [{"role": "user", "content": "Hi"}]))
    # Instruction
    <BLANKLINE>
    Be nice.
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
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if not messages or messages[-1].get("role") != "user":
        raise DecoderError("urial needs the conversation to end with a user message", "messages")
    parts = [prefix]
    system = "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "system").strip()
    if system:
        parts.append(system)
    for message in messages:
        role = message.get("role")
        if role == "user":
            parts.append(_block("Query", str(message.get("content") or "")))
        elif role == "assistant":
            parts.append(_block("Answer", str(message.get("content") or "")))
    parts.append(_block("Answer", "", close=False))
    return "\n\n".join(parts)


def clean(text: str) -> str:
    """The answer without the block's backticks, a leaked next ``# Query``, or surrounding whitespace."""
    for stop in STOPS:
        cut = text.find(stop)
        if cut != -1:
            text = text[:cut]
    return text.strip()


@register("urial")
class Urial(Sample):
    """URIAL: align a (base) model with a constant in-context prefix; samples like ``sample`` otherwise."""

    Params = UrialParams
    Options = UrialOptions
    description = "URIAL in-context alignment: a constant instruction + 3 examples prefix, stops at '# Query'."

    def _prepared(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeRequest:
        p: UrialParams = self.params  # type: ignore[assignment]
        options: UrialOptions = self.options  # type: ignore[assignment]
        if p.mode == "greedy" and request.n > 1:
            raise DecoderError("greedy URIAL gives one answer: set n=1 or decoder.mode='sample'", "n")
        prefix = _read_prefix(str(options.prompt_file or DEFAULT_PROMPT_FILE))
        text = render(prefix, request.prompt)
        sampling = request.sampling.but(
            temperature=0.0 if p.mode == "greedy" else p.temperature,
            top_p=1.0,
            top_k=0,
            repetition_penalty=p.repetition_penalty,
            stop=tuple(dict.fromkeys(request.sampling.stop + STOPS)),
            include_stop_str_in_output=False,
        )
        ids = ctx.engine.tokenizer.encode(text, add_special_tokens=True)
        return DecodeRequest(request.request_id, ids, request.prompt, sampling, request.n)

    async def decode(self, request: DecodeRequest, ctx: DecodeContext) -> DecodeResult:
        result = await super().decode(self._prepared(request, ctx), ctx)
        for c in result.candidates:
            c.text = clean(c.text)
        # Usage reports the prompt the model saw (the prefix included), as the engine counted it.
        return result

    async def stream(self, request: DecodeRequest, ctx: DecodeContext) -> AsyncIterator[StreamDelta | DecodeResult]:
        async for event in super().stream(self._prepared(request, ctx), ctx):
            if isinstance(event, DecodeResult):
                for c in event.candidates:
                    c.text = clean(c.text)
            yield event
