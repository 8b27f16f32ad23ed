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


LLAMA3_TEMPLATE = (  # Meta's Llama-3 chat template: 389 characters, longer than a file name may be
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def test_chat_template_inline_or_file_never_probes_template_text_as_a_path(tmp_path):
    from synpo.models import chat_template_text

    assert len(LLAMA3_TEMPLATE) > 255
    assert chat_template_text(LLAMA3_TEMPLATE) == LLAMA3_TEMPLATE
    path = tmp_path / "llama3.jinja"
    path.write_text(LLAMA3_TEMPLATE)
    assert chat_template_text(str(path)) == LLAMA3_TEMPLATE
    text = yaml.safe_dump({"model": {"chat_template": LLAMA3_TEMPLATE}})
    assert load_recipe(write(tmp_path, text)).model.chat_template == LLAMA3_TEMPLATE
    lines = problems(tmp_path, "model: {chat_template: templates/missing.jinja}\n")
    assert len(lines) == 1 and "model.chat_template: templates/missing.jinja" in lines[0]


def test_defaults_train_for_the_loss_and_adapter_they_apply_to():
    recipe = load_recipe(None, check_files=False)
    assert recipe.train.loss == "simpo" and recipe.train.beta == 2.0
    assert load_recipe(None, ["train.loss=dpo"], check_files=False).train.beta == 0.1
    assert load_recipe(None, ["train.loss=dpo", "train.beta=0.5"], check_files=False).train.beta == 0.5
    assert recipe.prompt_generator.train.adapter == "lora" and recipe.prompt_generator.train.learning_rate == 2e-4
    assert recipe.improver.train.learning_rate == 2e-4
    full = load_recipe(None, ["improver.train={adapter: full}", "train.adapter=full"], check_files=False)
    assert full.improver.train.learning_rate == 2e-5 and full.train.learning_rate == 1e-6


def test_seed_limit_takes_a_seeded_random_sample():
    from synpo.data.loaders import load_seed
    from synpo.recipe import SeedData

    everything = load_seed(SeedData())
    sample = load_seed(SeedData(limit=20), seed=0)
    assert len(sample) == 20 and sample == load_seed(SeedData(limit=20), seed=0)
    assert sample != everything[:20] and sample != load_seed(SeedData(limit=20), seed=1)
    position = {r["id"]: i for i, r in enumerate(everything)}
    assert [position[r["id"]] for r in sample] == sorted(position[r["id"]] for r in sample)  # file order


def test_recipe_paths_are_relative_to_the_recipe_file_and_set_paths_to_the_current_directory(tmp_path, monkeypatch):
    """A recipe's relative paths (its base, accelerate configs, engine.python, data files) resolve against
    its own folder, so the command works from anywhere; a --set path against the current directory."""
    from synpo.recipe import load_recipe

    folder = tmp_path / "recipes"
    (folder / "accelerate").mkdir(parents=True)
    (folder / "accelerate" / "ddp.yaml").write_text("num_processes: 2\n")
    (folder / "seed.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    (folder / "base.yaml").write_text("train: {accelerate_config: accelerate/ddp.yaml}\n"
                                      "engine: {python: ../venv/bin/python}\n")
    (folder / "r.yaml").write_text("base: base.yaml\nimprover: {train: {accelerate_config: accelerate/ddp.yaml}}\n"
                                   "data: {seed: {path: seed.jsonl, format: jsonl}}\n"
                                   "model: {path: org/some-model}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.yaml").write_text("{}\n")
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe("../recipes/r.yaml", ["prompt_generator.train.accelerate_config=mine.yaml"],
                         check_files=False)
    assert recipe.train.accelerate_config == str(folder / "accelerate" / "ddp.yaml")
    assert recipe.improver.train.accelerate_config == str(folder / "accelerate" / "ddp.yaml")
    assert recipe.engine.python == str(tmp_path / "venv" / "bin" / "python")
    assert recipe.data.seed.path == str(folder / "seed.jsonl")
    assert recipe.model.path == "org/some-model"  # nothing of that name there: a Hub id
    assert recipe.prompt_generator.train.accelerate_config == "mine.yaml"  # --set: the current directory


def test_a_top_level_engine_problem_is_reported_once_under_its_own_key(tmp_path):
    from synpo.errors import UserError
    from synpo.recipe import load_recipe

    with pytest.raises(UserError) as e:
        load_recipe(None, ["engine.python=/nowhere/python", "improver.engine={kind: vllm, python: /elsewhere/py}"])
    lines = str(e.value).splitlines()
    assert lines == ["<defaults>: engine.python: file does not exist: /nowhere/python",
                     "<defaults>: improver.engine.python: file does not exist: /elsewhere/py"]


def test_synpo_plan_works_away_from_the_repository(tmp_path, monkeypatch, capsys):
    from synpo.cli import main
    from tests.conftest import ROOT

    monkeypatch.chdir(tmp_path)
    assert main(["plan", str(ROOT / "recipes" / "llama3-8b-synpo-lora.yaml"), "--gpus", "8xA100-80G"]) == 0
    out = capsys.readouterr().out
    assert "accelerate_config" not in out and "DDP x8" in out


@pytest.mark.parametrize("overrides,expected", [
    (["runds=2"], "runds: unknown key (did you mean rounds?)"),
    (["train.lerning_rate=1e-6"], "train.lerning_rate: unknown key (did you mean train.learning_rate?)"),
    (["eval.judge={base_url: 'http://h/v1', modle: j}"],
     "eval.judge.modle: unknown key (did you mean eval.judge.model?)"),
    (["engine.batch_size=many"], "engine.batch_size: must be a whole number, not 'many'"),
    (["rounds=1.5"], "rounds: must be a whole number, not 1.5"),
    (["train.gradient_checkpointing=maybe"], "train.gradient_checkpointing: must be true or false, not 'maybe'"),
    (["engine=3"], "engine: must be a section: a mapping of its keys, e.g. {key: value}, not 3"),
    (["eval.suites=[arena_hard]", "eval.judge={base_url: 'http://h/v1'}"],
     "eval.judge: needs kind openai and a model name"),
    (["eval.suites=[arena_hard]", "eval.judge={model: j}"], "eval.judge.base_url: required when kind is openai"),
    (["eval.suites=[arena_hard]", "eval.judge={base_url: 'http://h/v1', model: j, api_key_env: SYNPO_UNSET_KEY}"],
     "eval.judge.api_key_env: the environment variable SYNPO_UNSET_KEY is not set"),
])
def test_errors_name_keys_as_written_in_plain_words(overrides, expected, monkeypatch):
    monkeypatch.delenv("SYNPO_UNSET_KEY", raising=False)
    with pytest.raises(UserError) as e:
        load_recipe(None, overrides)
    assert str(e.value).splitlines() == [f"<defaults>: {expected}"]
