"""A structured-output grammar continued from a committed prefix: what vLLM's own structured outputs cannot do.

vLLM starts a request's grammar at its first generated token. A decoder that extends a committed part of the
answer (DeAL's lookaheads, a blockwise round, a step of a step search, a QAlign proposal) sends that part as the
end of the prompt, so vLLM would start the grammar over after it and the answer would no longer match. Two
pieces keep the shape instead:

* :class:`PrefixGrammar`, a vLLM logits processor loaded into every engine alignd starts (and into a remote
  vLLM server with ``--logits-processors alignd.engines.grammar:PrefixGrammar``). A request whose
  ``extra_args`` carry :data:`EXTRA_ARG` has its grammar advanced over ``prompt[start:]`` (the committed part)
  and then over its own output, and every other token masked at every step.
* :class:`Shape`, the same grammar on alignd's side, for decoders that choose among the model's top-k tokens:
  vLLM computes those log-probs before any logits processor (its default ``raw_logprobs``), so the top-k of a
  constrained call still lists tokens the grammar forbids, and the decoder keeps only those :meth:`Shape.allowed`
  passes.

Both compile with xgrammar as vLLM's xgrammar backend does (JSON whitespace, separators, a choice as an EBNF
alternation), so a continued answer is held to the grammar a fresh one is.
"""

from __future__ import annotations

import functools
import json
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .protocol import Constraint

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EXTRA_ARG = "alignd_grammar"
"""The ``extra_args`` key (``vllm_xargs`` on a vLLM server) of a grammar continued from a prompt position."""

PROCESSOR = "alignd.engines.grammar:PrefixGrammar"
"""The processor as vLLM's ``logits_processors`` engine argument and ``--logits-processors`` flag name it."""


def extra_arg(constraint: Constraint, start: int, any_whitespace: bool) -> str:
    """The value of :data:`EXTRA_ARG`: the constraint, where the answer starts in the prompt, JSON whitespace.
    A string, because a vLLM server's ``vllm_xargs`` takes strings and numbers only.

    >>> extra_arg(Constraint.of("regex", "[0-9]+"), 12, False)
    '{"kind": "regex", "value": "[0-9]+", "start": 12, "any_whitespace": false}'
    """
    value = list(constraint.value) if isinstance(constraint.value, tuple) else constraint.value
    return json.dumps({"kind": constraint.kind, "value": value, "start": start, "any_whitespace": any_whitespace})


def choice_grammar(choices: Sequence[str]) -> str:
    """A choice as the EBNF alternation vLLM compiles it to (every string a quoted literal).

    >>> choice_grammar(['a"b', "c"])
    'root ::= "a\\\\"b" | "c"'
    """

    def literal(text: str) -> str:
        escaped = json.dumps(text, ensure_ascii=False)[1:-1]  # JSON's escapes are EBNF's: \\ \" \n \r \t \uXXXX
        return f'"{escaped}"'

    return "root ::= " + " | ".join(literal(c) for c in choices)


class Grammars:
    """Compiles constraints for one tokenizer, cached, as vLLM's xgrammar backend does.

    >>> grammars = Grammars(hf_tokenizer, vocab_size=49152)  # doctest: +SKIP
    >>> grammars.shape(Constraint.of("choice", ["yes", "no"]), any_whitespace=False)  # doctest: +SKIP
    """

    def __init__(self, hf_tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int] | None = None):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(
            hf_tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids) if stop_token_ids else None
        )
        self.vocab_size = vocab_size
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=True)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one Grammars per engine, alive as long as it
    def compile(self, constraint: Constraint, any_whitespace: bool) -> Any:
        separators = None if any_whitespace else (",", ":")
        if constraint.kind in ("json", "json_object"):
            schema = constraint.value if constraint.kind == "json" else '{"type": "object"}'
            return self.compiler.compile_json_schema(schema, any_whitespace=any_whitespace, separators=separators)
        if constraint.kind == "regex":
            return self.compiler.compile_regex(constraint.value)
        if constraint.kind == "choice":
            return self.compiler.compile_grammar(choice_grammar(constraint.value or ()))
        return self.compiler.compile_grammar(constraint.value)

    def shape(self, constraint: Constraint, any_whitespace: bool) -> Shape:
        return Shape(self.compile(constraint, any_whitespace), self.vocab_size)


@dataclass(slots=True)
class Shape:
    """A compiled grammar asked about token sequences: is a prefix valid, which next tokens keep it so."""

    compiled: Any
    vocab_size: int

    def matcher(self, prefix: Sequence[int]) -> Any | None:
        """A matcher advanced over ``prefix``; None if the grammar rejects it."""
        import xgrammar as xgr

        matcher = xgr.GrammarMatcher(self.compiled)
        for token in prefix:
            if matcher.is_terminated() or not matcher.accept_token(token):
                return None
        return matcher

    def allowed(self, prefix: Sequence[int], tokens: Sequence[int]) -> list[int]:
        """Those of ``tokens`` the grammar allows right after ``prefix`` (the stop token once it may end), in
        order; none if ``prefix`` itself breaks the grammar.

        >>> yes_no = grammars.shape(Constraint.of("choice", ["yes", "no"]), any_whitespace=False)  # doctest: +SKIP
        >>> yes_no.allowed(tok.encode("ye"), tok.encode("s") + tok.encode("t"))  # doctest: +SKIP
        [82]
        """
        import xgrammar as xgr

        matcher = self.matcher(prefix)
        if matcher is None or matcher.is_terminated():
            return []
        bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
        words = bitmask[0].tolist()
        return [t for t in tokens if 0 <= t < self.vocab_size and (words[t >> 5] >> (t & 31)) & 1]


_GRAMMARS: weakref.WeakKeyDictionary[Any, Grammars] = weakref.WeakKeyDictionary()


def shape_for(hf_tokenizer: Any, vocab_size: int, constraint: Constraint, any_whitespace: bool) -> Shape:
    """``constraint`` compiled for ``hf_tokenizer`` (one compiler per tokenizer, kept while it lives)."""
    grammars = _GRAMMARS.get(hf_tokenizer)
    if grammars is None or grammars.vocab_size != vocab_size:
        grammars = _GRAMMARS[hf_tokenizer] = Grammars(hf_tokenizer, vocab_size)
    return grammars.shape(constraint, any_whitespace)


def _engine_tokenizer(vllm_config: Any) -> Any:
    from vllm.tokenizers import cached_tokenizer_from_config

    return cached_tokenizer_from_config(model_config=vllm_config.model_config)


def _build_processor() -> type:
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    class _PrefixGrammar(AdapterLogitsProcessor):
        """vLLM logits processor: a request's structured-output grammar advanced over ``prompt[start:]`` (the part
        of the answer a decoder committed before this call) and its own output, every other token masked. Only
        requests whose ``extra_args`` carry :data:`EXTRA_ARG` are touched: the rest of a batch costs one lookup."""

        def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool):
            super().__init__(vllm_config, device, is_pin_memory)
            self.vllm_config = vllm_config
            self.grammars: Grammars | None = None

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            spec = (sampling_params.extra_args or {}).get(EXTRA_ARG)
            if spec is not None:
                parse_spec(spec)

        def is_argmax_invariant(self) -> bool:
            return False

        def new_req_logits_processor(self, params: Any) -> Any:
            spec = (params.extra_args or {}).get(EXTRA_ARG)
            if spec is None:
                return None
            constraint, start, any_whitespace = parse_spec(spec)
            if self.grammars is None:
                config = self.vllm_config.model_config
                self.grammars = Grammars(_engine_tokenizer(self.vllm_config), config.get_vocab_size())
            stops = list(params.all_stop_token_ids or ()) or None
            return _RequestGrammar(
                self.grammars.compile(constraint, any_whitespace), self.grammars.vocab_size, start, stops
            )

    return _PrefixGrammar


def parse_spec(spec: Any) -> tuple[Constraint, int, bool]:
    """The constraint, start and whitespace of an :data:`EXTRA_ARG` value; ValueError (vLLM's 400) if malformed."""
    try:
        fields = json.loads(spec) if isinstance(spec, str) else dict(spec)
        constraint = Constraint.of(fields["kind"], fields.get("value"))
        start = int(fields["start"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{EXTRA_ARG} must be a JSON object with kind, value and start: {exc}") from None
    if constraint.kind not in ("json", "json_object", "regex", "choice", "grammar") or start < 0:
        raise ValueError(f"{EXTRA_ARG}: unknown kind {constraint.kind!r} or negative start")
    return constraint, start, bool(fields.get("any_whitespace", False))


class _RequestGrammar:
    """One request's matcher, fed the committed prefix once and then every token the request generates."""

    def __init__(self, compiled: Any, vocab_size: int, start: int, stop_token_ids: list[int] | None):
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=stop_token_ids)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.start = start
        self.fed: int | None = None  # output tokens accepted so far; None until the prefix is
        self.broken = False

    def _feed(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            if self.matcher.is_terminated():
                return
            if not self.matcher.accept_token(token):
                # The committed prefix (or a token sampled without the mask, after preemption) breaks the grammar:
                # masking now could leave no token at all. The answer goes on free; alignd's check of the finished
                # answer marks it invalid.
                log.warning("a committed prefix does not match its grammar; the rest of the answer is unconstrained")
                self.broken = True
                return

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        import xgrammar as xgr

        if self.fed is None:
            self._feed(prompt_ids[self.start :])
            self.fed = 0
        if not self.broken and len(output_ids) > self.fed:
            self._feed(output_ids[self.fed :])
            self.fed = len(output_ids)
        if self.broken or self.matcher.is_terminated():
            return logits
        self.matcher.fill_next_token_bitmask(self.bitmask)
        row = logits.unsqueeze(0)
        xgr.apply_token_bitmask_inplace(row, self.bitmask.to(logits.device))
        return row.squeeze(0)


def __getattr__(name: str) -> Any:
    # vLLM loads ``alignd.engines.grammar:PrefixGrammar`` by name. The class subclasses vLLM's adapter, built on
    # that first lookup, so decoders import this module (for :class:`Shape`) without importing vLLM.
    if name == "PrefixGrammar":
        cls = _build_processor()
        cls.__name__ = cls.__qualname__ = "PrefixGrammar"
        cls.__module__ = __name__
        globals()["PrefixGrammar"] = cls
        return cls
    raise AttributeError(name)
