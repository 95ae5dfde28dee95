"""A thin :class:`~alignd.engines.protocol.Tokenizer` over a Hugging Face tokenizer.

Both engine adapters use it: the in-process one wraps the tokenizer vLLM loaded, the remote one loads the same
files locally, so prompts are tokenized identically whichever engine serves them. Chat templates render with
transformers, which evaluates them in jinja2's ``ImmutableSandboxedEnvironment``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .protocol import ChatMessage


class HFTokenizer:
    """Adapter from a ``transformers`` tokenizer to the engine protocol's tokenizer.

    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tok = HFTokenizer(AutoTokenizer.from_pretrained("/path/to/model"))  # doctest: +SKIP
    >>> tok.decode(tok.encode("hello"))  # doctest: +SKIP
    'hello'
    """

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        self.eos_token_id: int | None = hf_tokenizer.eos_token_id
        template = getattr(hf_tokenizer, "chat_template", None)
        self.has_chat_template = bool(template)
        self.renders_tools = isinstance(template, str) and "tools" in template
        """Whether the chat template renders ``tools`` (else alignd writes them into the system message)."""

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def token_to_str(self, token_id: int) -> str:
        """The text a single token contributes (byte-level BPE pieces decoded, not their raw symbols).

        A token holding part of a multi-byte character decodes to U+FFFD, and several such tokens would
        collide as keys of OpenAI's ``top_logprobs``; those are named ``token_id:N`` as vLLM's
        ``return_tokens_as_token_ids`` does.
        """
        text = self.hf.decode([token_id], skip_special_tokens=False)
        return f"token_id:{token_id}" if "\ufffd" in text else text

    def apply_chat_template(
        self,
        messages: Sequence[ChatMessage],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> str:
        if not self.has_chat_template:
            raise ValueError(
                "this model has no chat template: use /v1/completions with a plain prompt, "
                "or serve a model whose tokenizer_config.json defines chat_template"
            )
        return self.hf.apply_chat_template(
            list(messages),
            tools=list(tools) if tools else None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def vocab_size(self) -> int:
        return len(self.hf)
