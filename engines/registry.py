"""Engine adapters by name: what a model's ``engine:`` in the configuration may name, with the options model of
each (its ``engine_args``).

Built-in adapters register with :func:`register` (``vllm``: vLLM's ``AsyncLLM`` in this process; ``remote``: vLLM
OpenAI-compatible servers); third-party ones come from the entry-point group ``alignd.engines`` (see
:mod:`alignd.registry` for the plug-in policy). An adapter is a class generic over its options model, implementing
the :class:`~alignd.engines.protocol.Engine` protocol, so adding an engine kind touches nothing outside its file::

    class MyOptions(EngineOptions):
        url: str  # documented with a docstring below it, as every options field

    @register("mine")
    class MyEngine(EngineAdapter[MyOptions]):
        async def generate(self, prompts, params, request_id): ...

>>> sorted(engine_registry())
['remote', 'vllm']
>>> engine_registry()["remote"].tokenizer_only, engine_registry()["vllm"].tokenizer_only
(True, False)
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from ..registry import Registry, params_class
from .protocol import Pooler


class EngineOptions(BaseModel):
    """Base of an engine adapter's options (a model's ``engine_args``): unknown fields are errors, docstrings are
    the documentation, secrets are ``SecretStr``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


OptionsT = TypeVar("OptionsT", bound=EngineOptions)


class EngineAdapter(ABC, Generic[OptionsT]):
    """Base class of engine adapters: ``class RemoteEngine(EngineAdapter[RemoteOptions])`` sets ``Options`` from
    the type argument, :func:`register` sets ``name``. Subclasses implement the engine protocol and take
    ``(model name, path, options)``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[EngineOptions]] = EngineOptions
    tokenizer_only: ClassVar[bool] = False
    """Whether the model's ``path`` needs only tokenizer files (the weights are served elsewhere)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        options = params_class(cls, EngineOptions)
        if options is not None:
            cls.Options = options

    @classmethod
    def parse_options(cls, raw: EngineOptions | dict[str, Any] | None) -> Any:
        """``raw`` as this adapter's options (validated; an options object of the right class is kept as is)."""
        if isinstance(raw, cls.Options):
            return raw
        if isinstance(raw, BaseModel):
            raw = raw.model_dump()
        return cls.Options.model_validate(raw or {})

    @classmethod
    def collect_metrics(cls) -> Iterable[Any]:
        """Prometheus metric families about this adapter's live engines (read on every scrape of ``/metrics``)."""
        return ()

    @classmethod
    def pooler(cls, path: str, engine_args: dict[str, Any], **overrides: Any) -> Pooler:
        """A pooling model (classifier, process reward model) run by this kind of engine, for rewards; not
        started. Adapters that cannot pool raise ``NotImplementedError``."""
        raise NotImplementedError(f"engine {cls.name!r} runs no pooling models")


ENGINES: Registry[type[EngineAdapter]] = Registry("engine", "alignd.engines", EngineAdapter)


def register(name: str) -> Callable[[type[EngineAdapter]], type[EngineAdapter]]:
    """Class decorator that makes an engine adapter available to the configuration as ``engine: name``."""
    return ENGINES.register(name)


def engine_registry() -> dict[str, type[EngineAdapter]]:
    """Every engine adapter by name: built-ins plus the entry-point group ``alignd.engines``."""
    from . import remote, vllm_local  # noqa: F401  (importing registers them; neither imports vLLM yet)

    return ENGINES.classes()


def open_pooler(path: str, engine_args: dict[str, Any], *, engine: str = "vllm", **overrides: Any) -> Pooler:
    """A pooling model at ``path`` on the engine adapter ``engine`` (vLLM's pooling runner by default); not started.

    >>> pooler = open_pooler("/models/reward", {"dtype": "float32"})  # doctest: +SKIP
    >>> await pooler.start(); [logits] = await pooler.pool([[1, 2, 3]], "classify", "req-1")  # doctest: +SKIP
    """
    adapter = engine_registry().get(engine)
    if adapter is None:
        raise ValueError(f"no engine adapter {engine!r}; available: {sorted(engine_registry())}")
    return adapter.pooler(path, engine_args, **overrides)
