"""What a request gives as its prompt, and how it becomes prompt tokens: a text, token ids, or a chat rendered
with the model's template.

A route hands its prompts down as data (:class:`Text`, :class:`Tokens`, :class:`Chat`); the serving layer renders
them with :func:`render` once it knows the model, in its one sequence of checks. Rendering returns ``(prompt
token ids, what rewards see of the prompt)`` and refuses bad input with a 400 on the field it came from, before
anything reaches the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from ...engines.protocol import Engine
from ...rewards import Prompt
from ..errors import BadRequest


@dataclass(frozen=True, slots=True)
class Text:
    """A raw prompt, sent to the model as it is (with the model's BOS token where it has one)."""

    text: str
    param: str = "prompt"


@dataclass(frozen=True, slots=True)
class Tokens:
    """A prompt given as token ids."""

    ids: Sequence[int]
    param: str = "prompt"


@dataclass(frozen=True, slots=True)
class Chat:
    """A conversation, rendered with the model's chat template; ``messages`` have ``as_template_message()``."""

    messages: Sequence[Any]
    add_generation_prompt: bool = True
    param: str = "messages"


PromptInput = Text | Tokens | Chat


def render(engine: Engine, prompt: PromptInput) -> tuple[list[int], Prompt]:
    """``prompt`` as the model's token ids, and what rewards see of it."""
    if isinstance(prompt, Text):
        return text_prompt(engine, prompt.text)
    if isinstance(prompt, Tokens):
        return token_prompt(engine, prompt.ids, prompt.param)
    return chat_prompt(engine, prompt.messages, add_generation_prompt=prompt.add_generation_prompt)


def text_prompt(engine: Engine, text: str) -> tuple[list[int], Prompt]:
    """A raw prompt, tokenized with the model's special tokens (BOS where the model has one)."""
    return engine.tokenizer.encode(text, add_special_tokens=True), text


def token_prompt(engine: Engine, ids: Sequence[int], param: str = "prompt") -> tuple[list[int], Prompt]:
    """A prompt given as token ids; every id must be one of the model's (a negative or too large id is a 400,
    not a tokenizer crash)."""
    vocab = engine.info.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise BadRequest(f"prompt token ids must be in [0, {vocab}); got {bad}", param=param)
    # Special tokens are kept in the text (as vLLM does when it echoes a token prompt).
    return list(ids), engine.tokenizer.decode(ids, skip_special_tokens=False)


def chat_prompt(
    engine: Engine, messages: Sequence[Any], *, add_generation_prompt: bool = True
) -> tuple[list[int], Prompt]:
    """A conversation rendered with the model's chat template (which already holds the BOS and role tokens, so
    none are added again); rewards see the messages themselves."""
    try:
        rendered = [m.as_template_message() for m in messages]
        text = engine.tokenizer.apply_chat_template(rendered, add_generation_prompt=add_generation_prompt)
    except (ValueError, TemplateError) as exc:  # no chat template, a template that refuses the turns
        raise BadRequest(str(exc), param="messages") from None
    return engine.tokenizer.encode(text, add_special_tokens=False), rendered
