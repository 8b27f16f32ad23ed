"""The text templates in prompts/ (question generation, improver, judges), rendered with Jinja."""

from __future__ import annotations

from functools import cache
from pathlib import Path

# synpo/prompt_templates is a symlink to the top-level prompts/ folder, so that the templates
# are edited in one place and still ship inside the wheel.
PROMPTS_DIR = Path(__file__).parent / "prompt_templates"


@cache
def _template(name: str):
    import jinja2

    path = PROMPTS_DIR / f"{name}.jinja"
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False).from_string(
        path.read_text(encoding="utf-8"))


def render(name: str, **values) -> str:
    return _template(name).render(**values).strip()
