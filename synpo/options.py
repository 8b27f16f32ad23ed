"""The options reference, generated from the recipe schema (synpo/recipe.py) so it cannot drift.

`synpo config --options` prints it; docs/options.md is its output (`synpo config --options >
docs/options.md`; tests/test_options.py fails when the page is out of date or a field has no
description). `synpo config RECIPE` prints a resolved recipe with every default filled in.
"""

from __future__ import annotations

import json
import types
import typing

from pydantic import BaseModel

from synpo.recipe import Recipe, Section

HEADER = """# Recipe options

Every key a recipe may hold, its type, its default and its meaning, generated from the schema
(`synpo/recipe.py`) by `synpo config --options > docs/options.md`; do not edit by hand.
`synpo config RECIPE [--set KEY=VALUE ...]` prints a recipe as it resolves, every default filled
in. How recipes, `--set`, `base:` and paths work: [recipes.md](recipes.md).

A section whose default is empty (`null`) takes the keys of the section named in its type, e.g.
`improver.engine` takes the keys of `engine`.
"""


def _sections(annotation) -> list[type[Section]]:
    """The section classes an annotation names (`EngineConfig | None` -> [EngineConfig])."""
    candidates = [annotation, *typing.get_args(annotation)]
    return [a for a in candidates if isinstance(a, type) and issubclass(a, Section)]


def type_name(annotation) -> str:
    """The annotation in a reader's words: `int > 0`, `one of a, b`, `list of str`, `EngineConfig or null`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        base, *meta = args
        bounds = []
        for m in meta:
            for rule in getattr(m, "metadata", []) or [m]:
                for name, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
                    if getattr(rule, name, None) is not None:
                        bounds.append(f"{sign} {getattr(rule, name)}")
        return type_name(base) + (f" {', '.join(bounds)}" if bounds else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return f"section ({SECTION_KEY.get(annotation, annotation.__name__)})"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    value = field.default
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def rows(model: type[BaseModel] = Recipe, prefix: str = "", top: bool = True):
    """(key, type, default, description) of every field, depth first. A section is walked into where
    it has a default, so its keys show the defaults that hold there; an optional one (default null)
    is walked into too unless its kind has such a place (`improver.engine`: see `engine`)."""
    if top:
        SECTION_KEY.clear()
        _index()
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        description = " ".join((field.description or "").split())
        inner = type(field.default) if isinstance(field.default, Section) else \
            next((c for c in _sections(field.annotation) if c not in SECTION_KEY), None)
        kind = type_name(field.annotation)
        for cls in _sections(field.annotation):
            here = "section" if cls is inner else f"section like `{SECTION_KEY[cls]}`"
            kind = kind.replace(f"section ({SECTION_KEY.get(cls, cls.__name__)})", here)
        yield key, kind, _default(field), description
        if inner is not None:
            yield from rows(inner, key + ".", top=False)


# the key whose rows document each section class (for `section (engine)` in a type)
SECTION_KEY: dict[type, str] = {}


def _index(model: type[BaseModel] = Recipe, prefix: str = "") -> None:
    """SECTION_KEY: each section kind's first place with a default, walking the schema in order."""
    for name, field in model.model_fields.items():
        for cls in ([type(field.default)] if isinstance(field.default, Section) else _sections(field.annotation)):
            if cls not in SECTION_KEY and isinstance(field.default, Section):
                SECTION_KEY[cls] = prefix + name
                _index(cls, prefix + name + ".")


def undescribed() -> list[str]:
    """Keys of fields without a description (tests/test_options.py wants none)."""
    return [key for key, _, _, description in rows() if not description]


def render_options() -> str:
    out = [HEADER]
    section = None
    for key, kind, default, description in rows():
        top = key.split(".")[0]
        if top != section:
            section = top
            out += [f"\n## `{top}`\n", "| key | type | default | meaning |", "|---|---|---|---|"]
        out.append(f"| `{key}` | {kind} | {default} | {description.replace('|', '/')} |")
    return "\n".join(out) + "\n"
