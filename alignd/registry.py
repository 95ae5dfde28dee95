"""One registry implementation for decoders and reward kinds: built-ins register with a decorator, plug-ins
arrive through an entry-point group.

The plug-in policy is the same for both: every entry point of the group is imported the first time the registry
is read (the server reads both registries while it starts), and an entry point that fails to import stops
start-up with a :class:`PluginError` naming the distribution, the entry point and the cause. A server never runs
without a plug-in its operator installed, and never learns about a broken one at the first request that needs
it. Entry points that are not classes of the registry's base are left alone: the ``alignd.rewards`` group also
publishes plain callables for the ``python`` reward kind.

>>> from alignd.registry import Registry
>>> class Base: name = ""
>>> shapes = Registry("shape", "alignd.example_shapes", Base)
>>> @shapes.register("square")
... class Square(Base): ...
>>> shapes.names(), Square.name
(['square'], 'square')
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar, get_args

T = TypeVar("T", bound=type)


def params_class(cls: type, bound: type) -> Any:
    """The subclass of ``bound`` that ``cls`` was parametrised with (``class Deal(Decoder[DealParams])``), or None.

    Decoders and rewards read their ``Params`` from their generic base, so a plug-in names its parameters once.
    """
    for base in cls.__dict__.get("__orig_bases__", ()):
        for arg in get_args(base):
            if isinstance(arg, type) and issubclass(arg, bound):
                return arg
    return None


class PluginError(RuntimeError):
    """An installed plug-in could not be loaded; the message names the package to fix or uninstall."""


class Registry(Generic[T]):
    """Named classes of one kind: ``@registry.register(name)`` for built-ins, the entry-point group for plug-ins.

    The registered name is written to the class attribute ``attr`` (``name`` for decoders, ``kind`` for rewards).
    """

    def __init__(
        self, what: str, group: str, base: type, attr: str = "name", check: Callable[[type], None] | None = None
    ):
        self.what = what
        self.group = group
        self.base = base
        self.attr = attr
        self.check = check
        """Run on every class as it registers; raises ``ValueError`` saying what is wrong with it (a decoder
        parameter capped by a limit the server does not have...), so a mistake fails at import, not at a request."""
        self._classes: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make ``cls`` available under ``name``; a second class under one name is an error, and so
        is anything :attr:`check` refuses."""

        def deco(cls: T) -> T:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            if self.check is not None:
                self.check(cls)
            setattr(cls, self.attr, name)
            self._classes[name] = cls
            return cls

        return deco

    def load_plugins(self) -> None:
        """Import every entry point of the group once; raise :class:`PluginError` for one that fails to import or
        that :attr:`check` refuses."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            obj = _load(ep, self.what)
            if isinstance(obj, type) and issubclass(obj, self.base):
                try:
                    self.register(ep.name)(obj)
                except ValueError as exc:
                    raise PluginError(_broken(ep, self.what, exc)) from exc

    def classes(self) -> dict[str, T]:
        """Every registered class by name, built-ins and plug-ins."""
        self.load_plugins()
        return dict(self._classes)

    def get(self, name: str) -> T | None:
        return self.classes().get(name)

    def names(self) -> list[str]:
        return sorted(self.classes())


def _load(ep: EntryPoint, what: str) -> object:
    try:
        return ep.load()
    except Exception as exc:
        raise PluginError(_broken(ep, what, exc)) from exc


def _broken(ep: EntryPoint, what: str, exc: Exception) -> str:
    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an installed package"
    return (
        f"the {what} plug-in {ep.name!r} ({ep.value}, from {dist}) failed to load: {type(exc).__name__}: {exc}. "
        f"Fix or uninstall that package; alignd does not start without a plug-in its operator installed."
    )
