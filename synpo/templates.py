"""The text templates in prompts/ (question generation, improver, judges), rendered with Jinja.

The templates are edited in one place, the top-level prompts/ folder beside recipes/. The wheel
ships that folder as the package `synpo.prompt_templates` (pyproject.toml maps the package onto
it with setuptools' package-dir), so the directory is found in one of two ways:
- a source checkout (PYTHONPATH=<checkout>, an sdist, an editable install): prompts/ beside synpo/;
- an installed wheel: the files of the package synpo.prompt_templates.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path


def _prompts_dir() -> Traversable:
    # The checkout is tried first: setuptools' editable install does not make the mapped
    # synpo.prompt_templates importable, and an install of another checkout must not shadow
    # the templates of the copy that is running.
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "prompts").is_dir():
        return checkout / "prompts"
    return resources.files("synpo.prompt_templates")


PROMPTS_DIR = _prompts_dir()


@cache
def _template(name: str):
    import jinja2

    path = PROMPTS_DIR / f"{name}.jinja"
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False).from_string(
        path.read_text(encoding="utf-8"))


def render(name: str, **values) -> str:
    return _template(name).render(**values).strip()
