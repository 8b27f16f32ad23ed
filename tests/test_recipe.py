import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synpo.errors import UserError
from synpo.recipe import Recipe, dump_recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny-cpu.yaml"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def problems(tmp_path, text: str, *overrides: str) -> list[str]:
    with pytest.raises(UserError) as info:
        load_recipe(write(tmp_path, text), list(overrides))
    return str(info.value).splitlines()


def test_shipped_recipe_loads_and_resolves():
    recipe = load_recipe(TINY)
    assert recipe.name == "tiny-cpu"
    assert recipe.rounds == 3
    assert recipe.scorer.kind == "toy"


def test_overrides_parse_values_as_yaml():
    recipe = load_recipe(TINY, ["rounds=1", "train.beta=4.5", "train.adapter=lora", "eval.suites=[toy]"])
    assert recipe.rounds == 1 and recipe.train.beta == 4.5 and recipe.train.adapter == "lora"


def test_every_problem_is_reported_with_its_yaml_path(tmp_path):
    lines = problems(tmp_path, "train:\n  beta: -1\n  lossy: 3\nrounds: zero\n")
    text = "\n".join(lines)
    assert len(lines) == 3
    assert "train.beta: must be > 0" in text
    assert "train.lossy: unknown key" in text
    assert "rounds:" in text
    assert all(line.startswith(str(tmp_path / "r.yaml")) for line in lines)


def test_literal_choices_are_named(tmp_path):
    (line,) = problems(tmp_path, "train:\n  loss: ppo\n")
    assert "train.loss: must be one of 'simpo', 'dpo' or 'sft'" in line


def test_missing_files_are_rejected(tmp_path):
    lines = problems(tmp_path, "model:\n  path: ./no/such/model\ndata:\n  seed:\n    path: nowhere.jsonl\n")
    text = "\n".join(lines)
    assert "model.path: ./no/such/model: model path does not exist" in text
    assert "data.seed.path: file does not exist: nowhere.jsonl" in text


def test_override_of_unknown_key_is_rejected(tmp_path):
    lines = problems(tmp_path, "name: x\n", "train.bta=2")
    assert any("train.bta: unknown key" in line for line in lines)


def test_bad_yaml_names_the_line(tmp_path):
    (line,) = problems(tmp_path, "name: x\ntrain: [unclosed\n")
    assert line.startswith(f"{tmp_path / 'r.yaml'}:")
    assert "not valid YAML" in line


def test_periodic_lora_needs_a_schedule_and_qlora_needs_lora(tmp_path):
    text = "\n".join(problems(tmp_path, "train:\n  adapter: full\n  quantization: 4bit\n"))
    assert "QLoRA needs adapter lora" in text
    recipe = Recipe.model_validate({"train": {"adapter": "periodic_lora"}})
    assert recipe.train.periodic.stages == 4  # a default schedule


def test_dump_round_trips_and_holds_no_secret_fields():
    recipe = load_recipe(TINY)
    again = Recipe.model_validate(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe
    assert "api_key:" not in dump_recipe(recipe)  # only the *name* of an env var is ever stored


def test_iterate_exits_2_before_any_work(tmp_path):
    bad = write(tmp_path, "train:\n  beta: 0\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "synpo.iterate", str(bad), "--run-dir", str(run_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.beta: must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()
