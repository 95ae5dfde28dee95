"""mkdocs hook: reference tables generated from the code when the site builds, so the docs cannot drift from it.

A page writes a marker on a line of its own, and the build replaces it with a table made from the pydantic model
the code itself validates with (each field's docstring is its description, as for ``alignd serve --help``):

* ``<!-- alignd:settings -->``: every setting of ``alignd serve``, with its flag and ``ALIGND_*`` variable;
* ``<!-- alignd:decoder NAME -->``: the parameters a request may give decoder NAME;
* ``<!-- alignd:reward KIND -->``: the parameters of reward kind KIND;
* ``<!-- alignd:engine NAME -->``: the ``engine_args`` of engine adapter NAME.

A marker naming nothing registered, and a registered decoder, reward kind or engine no page documents, fail the
build (``mkdocs build --strict`` runs in the test suite).
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

_MARKER = re.compile(r"^<!-- alignd:(?P<what>settings|decoder|reward|engine)(?: (?P<name>[\w.-]+))? -->$", re.M)
_SKIPPED = {"type", "description", "timeout_s", "on_error", "normalize"}
"""Reward fields every kind has: documented once, on the rewards page."""
_OPEN_BLOCKS = ("RewardParams", "DecoderParams", "EngineOptions")
"""Blocks whose fields depend on a kind (documented on the kind's page), not nested settings."""
_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"), ("max_length", "length ≤"))
_seen: dict[str, set[str]] = {"decoder": set(), "reward": set(), "engine": set()}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return _MARKER.sub(lambda m: _table(m.group("what"), m.group("name"), page.file.src_path), markdown)


def on_post_build(config: Any) -> None:
    from alignd.decoders import decoder_registry
    from alignd.engines.registry import engine_registry
    from alignd.rewards import reward_kinds

    for what, names in (("decoder", decoder_registry()), ("reward", reward_kinds()), ("engine", engine_registry())):
        missing = sorted(set(names) - _seen[what])
        if missing:
            raise PluginError(f"no page documents the {what}s {missing}: add <!-- alignd:{what} NAME --> markers")


def _table(what: str, name: str | None, page: str) -> str:
    if what == "settings":
        from alignd.server.settings import Settings

        return _settings(Settings)
    registry = _registry(what)
    if name not in registry:
        raise PluginError(f"{page}: <!-- alignd:{what} {name} --> names no {what}; registered: {sorted(registry)}")
    _seen[what].add(name)
    cls = registry[name]
    model = {"decoder": "Params", "reward": "Params", "engine": "Options"}[what]
    rows = _rows(getattr(cls, model), skip=_SKIPPED if what == "reward" else set())
    if not rows:
        return "_No parameters._"
    return _render(["parameter", "type", "default", "description"], rows)


def _registry(what: str) -> dict[str, Any]:
    if what == "decoder":
        from alignd.decoders import decoder_registry

        return decoder_registry()
    if what == "reward":
        from alignd.rewards import reward_kinds

        return reward_kinds()
    from alignd.engines.registry import engine_registry

    return engine_registry()


def _settings(settings: type[BaseModel]) -> str:
    """One table per level: the top-level settings, then each nested model (``limits``, a model's fields)."""
    sections = [("", settings)]
    out = []
    while sections:
        prefix, model = sections.pop(0)
        rows = []
        for field, info in model.model_fields.items():
            dotted = f"{prefix}{field}"
            nested = _nested_model(info)
            if nested is not None:
                key = f"{dotted}.<name>" if _is_mapping(info) else dotted
                sections.append((f"{key}.", nested))
            flag = f"`--{dotted.replace('_', '-')}`" if not prefix else ""
            env = f"`ALIGND_{dotted.upper().replace('.', '__')}`" if "<" not in dotted else ""
            rows.append(
                [f"`{dotted}`", _type(info), _default(info), _describe(info), " ".join(filter(None, [flag, env]))]
            )
        title = f"### `{prefix.rstrip('.')}`\n\n" if prefix else ""
        out.append(title + _render(["setting", "type", "default", "description", "flag, variable"], rows))
    return "\n\n".join(out)


def _rows(model: type[BaseModel], skip: set[str]) -> list[list[str]]:
    return [
        [f"`{field}`", _type(info), _default(info), _describe(info)]
        for field, info in model.model_fields.items()
        if field not in skip
    ]


def _nested_model(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    for arg in (annotation, *typing.get_args(annotation)):
        if (
            isinstance(arg, type)
            and issubclass(arg, BaseModel)
            and arg.__name__ not in ("RewardParams", "DecoderParams", "EngineOptions")
        ):
            return arg
    return None


def _is_mapping(info: FieldInfo) -> bool:
    return typing.get_origin(info.annotation) is dict


def _type(info: FieldInfo) -> str:
    text = repr(info.annotation) if not isinstance(info.annotation, type) else info.annotation.__name__
    text = re.sub(r"\b(typing|pathlib|pydantic\.types|pydantic\.functional_serializers|alignd\.[\w.]+)\.", "", text)
    text = text.replace("NoneType", "None").replace("SerializeAsAny[", "").replace("Annotated[", "")
    text = re.sub(r", SerializeAsAny\(\)\]", "", text)
    return f"`{text}`".replace("|", "\\|")  # a bare | would split the table's cell


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return ""
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, dict) and value:
        return ", ".join(f"`{key}`" for key in value)
    if isinstance(value, Path):
        return f"`{str(value).replace(str(Path.home()), '~')}`"
    return f"`{value!r}`"


def _describe(info: FieldInfo) -> str:
    text = " ".join((info.description or "").split())
    bounds = []
    for item in info.metadata:
        for attr, symbol in (
            ("ge", "≥"),
            ("gt", ">"),
            ("le", "≤"),
            ("lt", "<"),
            ("min_length", "length ≥"),
            ("max_length", "length ≤"),
        ):
            value = getattr(item, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "x-alignd-cap" in extra:
        bounds.append(f"≤ `limits.{extra['x-alignd-cap']}`")
    suffix = f" ({', '.join(bounds)})" if bounds else ""
    return (text + suffix).replace("|", "\\|")


def _render(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
