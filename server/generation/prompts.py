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
from ...structured import hermes_messages, template_messages
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
    tools: tuple[dict[str, Any], ...] = ()
    """Tools the model may call, in OpenAI's shape, rendered by the template or (if it has no place for them)
    written into the system message."""


PromptInput = Text | Tokens | Chat


def render(engine: Engine, prompt: PromptInput) -> tuple[list[int], Prompt]:
    """``prompt`` as the model's token ids, and what rewards see of it."""
    if isinstance(prompt, Text):
        return text_prompt(engine, prompt.text)
    if isinstance(prompt, Tokens):
        return token_prompt(engine, prompt.ids, prompt.param)
    return chat_prompt(engine, prompt.messages, add_generation_prompt=prompt.add_generation_prompt, tools=prompt.tools)


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
    engine: Engine, messages: Sequence[Any], *, add_generation_prompt: bool = True, tools: Sequence[dict] = ()
) -> tuple[list[int], Prompt]:
    """A conversation rendered with the model's chat template (which already holds the BOS and role tokens, so
    none are added again); rewards see the messages themselves.

    Tools and the history's tool calls go to a template that renders them; a template that only renders roles
    and contents (SmolLM2's) gets them written as text in the Hermes format, which the ``hermes`` tool parser
    reads back."""
    try:
        rendered = [m.as_template_message() for m in messages]
        tok = engine.tokenizer
        if getattr(tok, "renders_tools", False):
            rendered, given = template_messages(rendered), list(tools) or None
        elif tools or any("tool_calls" in m or m["role"] == "tool" for m in rendered):
            rendered, given = hermes_messages(rendered, tools), None
        else:
            given = None
        text = tok.apply_chat_template(rendered, add_generation_prompt=add_generation_prompt, tools=given)
    except (ValueError, TemplateError) as exc:  # no chat template, a template that refuses the turns
        raise BadRequest(str(exc), param="messages") from None
    return engine.tokenizer.encode(text, add_special_tokens=False), rendered
