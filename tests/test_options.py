"""The options reference: generated from the schema, every field described, docs/options.md up to
date, and `synpo config` printing a resolved recipe with every default."""

import yaml

from synpo.cli import main
from synpo.options import render_options, rows, undescribed
from synpo.recipe import Recipe, Section, load_recipe
from tests.conftest import ROOT


def _fields(model, seen=None):
    """Every (class, field) of the schema, reached through any annotation."""
    import typing

    seen = set() if seen is None else seen
    if model in seen:
        return []
    seen.add(model)
    out = []
    for name, field in model.model_fields.items():
        out.append((model.__name__, name, field))
        stack = [field.annotation]
        while stack:
            a = stack.pop()
            if isinstance(a, type) and issubclass(a, Section):
                out += _fields(a, seen)
            stack += list(typing.get_args(a))
    return out


def test_every_field_of_the_schema_has_a_description():
    missing = [f"{cls}.{name}" for cls, name, field in _fields(Recipe) if not (field.description or "").strip()]
    assert missing == [], f"fields without a description (a docstring under the field): {missing}"
    assert undescribed() == []


def test_the_options_page_lists_every_key_and_is_up_to_date():
    page = (ROOT / "docs" / "options.md").read_text()
    assert page == render_options(), "docs/options.md is stale: run `synpo config --options > docs/options.md`"
    keys = [key for key, *_ in rows()]
    for key in ("runtime.gpus", "train.periodic.stages", "eval.judge", "data.seed.prompt_field", "engine.python"):
        assert key in keys and f"| `{key}` |" in page
    # every key a resolved recipe holds is on the page
    def flat(d, prefix=""):
        for k, v in d.items():
            yield prefix + k
            if isinstance(v, dict) and v and k not in ("extra_body",):
                yield from flat(v, prefix + k + ".")
    resolved = load_recipe(None, ["train.adapter=periodic_lora"], check_files=False).model_dump(mode="json")
    assert set(flat(resolved)) <= set(keys)


def test_synpo_config_prints_the_resolved_recipe_with_every_default(capsys):
    assert main(["config", str(ROOT / "recipes" / "tiny-cpu.yaml"), "--set", "rounds=1"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", ["rounds=1"]).model_dump(mode="json")
    assert printed == expected and printed["rounds"] == 1
    assert printed["engine"]["shard_size"] == 256 and "gpus" in printed["runtime"]  # defaults the file never names
    assert main(["config", "--set", "rounds=zero"]) == 2
