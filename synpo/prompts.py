"""The text templates in prompts/ (question generation, improver, judges), rendered with Jinja."""

from __future__ import annotations

from functools import cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


@cache
def _template(name: str):
    import jinja2

    path = PROMPTS_DIR / f"{name}.jinja"
    if not path.exists():  # installed as a package: templates ship inside it
        path = Path(__file__).parent / "prompt_templates" / f"{name}.jinja"
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False).from_string(
        path.read_text(encoding="utf-8"))


def render(name: str, **values) -> str:
    return _template(name).render(**values).strip()
