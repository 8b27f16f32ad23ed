"""Every field of the recipe schema reaches exactly the stages whose inputs hold it.

The walk changes one leaf field at a time, on a few base recipes that between them reach every
field (a field of a section that is unset in one base is reached in another). For each change:
- the stages expected to re-run are derived from the stages' own inputs: those whose typed inputs
  (less NOT_FINGERPRINTED fields) differ, or that read a changed source (θ0, the seed set), and
  every stage downstream of one of those;
- the fingerprints must change for exactly those stages;
- the loop, resuming a finished run under the changed recipe, must run exactly those stages again
  (and any stage the change adds), with the stage work itself replaced by writing its output.
A field whose change reaches no stage in any base must be listed in synpo.recipe.NOT_FINGERPRINTED,
and a listed field must reach none.
"""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from synpo.iterate import Loop, run_stages, source_fingerprints
from synpo.recipe import NOT_FINGERPRINTED, Recipe, Section, load_recipe
from synpo.run import Run, fingerprint_view, fingerprints

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny-cpu.yaml"
JUDGE = "{base_url: 'http://127.0.0.1:9/v1', model: judge}"
BASES = {
    "tiny-cpu": ["rounds=2"],
    # every optional section set: judged suites, per-stage engines, PeriodicLoRA's section, a chat template
    "judged": ["rounds=2", "eval.suites=[toy, alpaca_eval, arena_hard, mt_bench]", f"eval.judge={JUDGE}",
               "eval.engine={kind: hf}", "prompt_generator.engine={kind: hf}", "improver.engine={kind: hf}",
               "responses.engine={kind: hf}", "model.chat_template='{{ messages }}'",
               "train.adapter=periodic_lora", "train.periodic={stages: 4}",
               "prompt_generator.train.adapter=periodic_lora", "prompt_generator.train.periodic={stages: 4}",
               "improver.train.adapter=periodic_lora", "improver.train.periodic={stages: 4}",
               "eval.data_dir=/nonexistent", "train.max_steps=3", "data.seed.limit=10", "eval.limit=5"],
    "sampling_ranking": ["rounds=2", "pairs.strategy=sampling_ranking", f"scorer={{kind: judge, judge: {JUDGE}}}"],
    "ablations": ["rounds=2", "prompt_generator.enabled=false", "improver.trained=false"],
    "lora": ["rounds=2", "train.adapter=lora", "prompt_generator.train.adapter=lora", "improver.train.adapter=lora"],
}
# values a generic rule cannot pick (a valid change of the field)
SPECIAL = {
    "eval.suites": "[toy, alpaca_eval]",
    "scorer.kind": None,  # changing the scorer's kind needs its other fields: done through "scorer=" in a base
    "engine.kind": None, "eval.judge.kind": None, "scorer.judge.kind": None,  # openai only, or needs base_url
    "prompt_generator.engine.kind": None, "improver.engine.kind": None, "responses.engine.kind": None,
    "eval.engine.kind": None,
    "eval.alpaca_eval_backend": "official",
    "target_modules": '["q_proj"]',
    "logging.report_to": '["tensorboard"]',
    # PeriodicLoRA takes one of stage_steps and stages: setting one unsets the other
    "stage_steps": lambda path: f"{path.rsplit('.', 1)[0]}={{stage_steps: 7}}",
    # an openai engine (a judge) refuses placement settings: it spreads requests with concurrency
    "eval.judge.data_parallel_size": None, "eval.judge.ray_address": None,
    "scorer.judge.data_parallel_size": None, "scorer.judge.ray_address": None,
}


def _options(annotation) -> list:
    """The Literal values an annotation allows (through Optional / Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for a in typing.get_args(annotation) for v in _options(a)]


def _changed(path: str, value, annotation):
    """A different value for a leaf, as YAML text (or a list of candidates); None when the field is skipped."""
    name = path.rsplit(".", 1)[-1]
    if path in SPECIAL or name in SPECIAL:
        return SPECIAL[path] if path in SPECIAL else SPECIAL[name]
    options = [o for o in _options(annotation) if o != value]
    if isinstance(value, bool):
        return json.dumps(not value)
    if options and not isinstance(value, list):
        return json.dumps(options[0])
    if isinstance(value, int):
        return str(value + 1)
    if isinstance(value, float):
        return str(value / 2 if value > 0 else 0.1)
    if isinstance(value, str):
        return json.dumps(value + "x")
    if isinstance(value, list):
        return json.dumps(["q_proj"] if not value or value == "all-linear" else [*value, *value[:1]])
    if isinstance(value, dict):
        return json.dumps({**value, "x": 1})
    if value is None:
        return ["7", "0.5", json.dumps("x")]  # the first the field accepts
    raise AssertionError(f"{path}: no rule to change a {type(value).__name__}; add it to SPECIAL")


def _leaves(section: BaseModel, prefix: str = ""):
    """(dotted path, value, annotation, owning section class) of every leaf set in this recipe."""
    for name, info in type(section).model_fields.items():
        value, path = getattr(section, name), f"{prefix}{name}"
        if isinstance(value, Section):
            yield from _leaves(value, path + ".")
        elif value is None and any(isinstance(a, type) and issubclass(a, Section)
                                   for a in typing.get_args(info.annotation)):
            continue  # an unset optional section: another base recipe sets it
        else:
            yield path, value, info.annotation, type(section)


def _schema_leaves(cls: type[BaseModel], prefix: str = "") -> set[str]:
    """Every leaf path of the schema, through optional sections."""
    out = set()
    for name, info in cls.model_fields.items():
        sections = [a for a in (info.annotation, *typing.get_args(info.annotation))
                    if isinstance(a, type) and issubclass(a, Section)]
        if sections:
            out |= _schema_leaves(sections[0], f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def _listed(path: str, owner: type) -> bool:
    """NOT_FINGERPRINTED lists the field (by its section class) or a section above it (by the Recipe)."""
    names = {c.__name__ for c in owner.__mro__}
    if any(path.rsplit(".", 1)[-1] in NOT_FINGERPRINTED.get(n, set()) for n in names):
        return True
    parts = path.split(".")
    return any(p in NOT_FINGERPRINTED.get("Recipe", set()) for p in parts[:1])


SEED_IDS = ["s1", "s2"]


def _expected(before: Recipe, after: Recipe) -> set[str]:
    """Stages whose inputs differ or that read a changed source, and everything downstream of them."""
    old = {s.key: s for s in run_stages(before)}
    sources_old, sources_new = source_fingerprints(before, SEED_IDS), source_fingerprints(after, SEED_IDS)
    changed = {k for k in sources_old if sources_old[k] != sources_new[k]}
    out = set()
    for stage in run_stages(after):
        if stage.key not in old:
            continue
        reads = {k for v in stage.reads.values() for k in (v if isinstance(v, list) else [v])}
        if (type(stage.inputs) is not type(old[stage.key].inputs)
                or fingerprint_view(stage.inputs) != fingerprint_view(old[stage.key].inputs)
                or reads & (changed | out) or stage.reads != old[stage.key].reads):
            out.add(stage.key)
    return out


def _changed_fingerprints(before: Recipe, after: Recipe) -> set[str]:
    a = fingerprints(run_stages(before), source_fingerprints(before, SEED_IDS))
    b = fingerprints(run_stages(after), source_fingerprints(after, SEED_IDS))
    return {k for k in set(a) & set(b) if a[k] != b[k]} - set(source_fingerprints(before, SEED_IDS))


def _variants():
    """(base, field, before, after, owner) for every leaf of every base that the base lets change."""
    for base, overrides in BASES.items():
        before = load_recipe(RECIPE, overrides, check_files=False)
        for path, value, annotation, owner in _leaves(before):
            yield base, path, before, _change(base, path, value, annotation), owner


def _change(base: str, path: str, value, annotation) -> Recipe | str | None:
    """The base recipe with the field changed; None when skipped; the error when no change is valid here."""
    values = _changed(path, value, annotation)
    if values is None:
        return None
    if callable(values):  # an assignment of the section above the field
        assignments = [values(path)]
    else:
        assignments = [f"{path}={v}" for v in (values if isinstance(values, list) else [values])]
    error = ""
    for assignment in assignments:  # the first the schema accepts
        try:
            return load_recipe(RECIPE, [*BASES[base], assignment], check_files=False)
        except Exception as e:  # noqa: BLE001 - kept: reported when no base takes a change of the field
            error = f"{assignment}: {str(e).splitlines()[0]}"
    return error


@pytest.mark.slow
def test_every_field_reaches_exactly_the_stages_that_read_it():
    reached: dict[str, bool] = {}
    owners: dict[str, type] = {}
    invalid: dict[str, str] = {}
    problems = []
    for base, path, before, after, owner in _variants():
        if not isinstance(after, Recipe):
            if after:
                invalid[path] = after
            continue
        expected, actual = _expected(before, after), _changed_fingerprints(before, after)
        if expected != actual:
            problems.append(f"{base}: {path}: fingerprints changed for {sorted(actual)}, inputs for {sorted(expected)}")
        reached[path] = reached.get(path, False) or bool(actual)
        owners[path] = owner
    for path, hit in sorted(reached.items()):
        if hit and _listed(path, owners[path]):
            problems.append(f"{path}: listed in NOT_FINGERPRINTED, yet changing it re-runs stages")
        if not hit and not _listed(path, owners[path]):
            problems.append(f"{path}: reaches no stage's inputs in any base recipe; list it in NOT_FINGERPRINTED "
                            "(if it changes nothing a stage writes) or give it to the stage that reads it")
    problems += [f"no base recipe takes a change of {error}; add a base or a value in SPECIAL"
                 for path, error in sorted(invalid.items()) if path not in reached]
    skipped = {p for p in SPECIAL if SPECIAL[p] is None}
    unwalked = _schema_leaves(Recipe) - set(reached) - set(invalid) - skipped
    if unwalked:
        problems.append(f"fields no base recipe sets (add a base that does): {sorted(unwalked)}")
    assert not problems, "\n".join(problems)


def test_engine_shard_size_and_eval_data_dir_reach_the_stages_they_change():
    """The two drifts of the hand-written lists: shard_size seeds each shard's sampling; eval.data_dir
    feeds decontamination."""
    base = load_recipe(RECIPE, ["rounds=1"], check_files=False)
    shards = _changed_fingerprints(base, load_recipe(RECIPE, ["rounds=1", "engine.shard_size=64"], check_files=False))
    assert {"round_01/prompts", "round_01/responses", "round_01/refined", "round_00/eval/toy"} <= shards
    data_dir = _changed_fingerprints(base, load_recipe(RECIPE, ["rounds=1", "eval.data_dir=/x"], check_files=False))
    assert "round_01/prompts" in data_dir and "prompt_generator" not in data_dir
    placement = _changed_fingerprints(base, load_recipe(RECIPE, ["rounds=1", "engine.data_parallel_size=4"],
                                                        check_files=False))
    assert placement == set()


@pytest.fixture()
def finished_run(tmp_path, monkeypatch):
    """A two-round run of tiny-cpu whose stages only wrote their outputs (the loop's bookkeeping is real)."""
    ran: list[str] = []

    def execute(self, stage, work):
        out = self.run.dir / stage.output
        if "." in out.name:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("{}\n")
        else:
            out.mkdir(parents=True, exist_ok=True)
        ran.append(stage.key)
        return {}

    monkeypatch.setattr(Loop, "execute", execute)
    monkeypatch.setattr(Loop, "end_round", lambda self, t: None)
    seed_rows = [{"id": i, "prompt": "p", "response": "r"} for i in SEED_IDS]
    base = load_recipe(RECIPE, BASES["tiny-cpu"], check_files=False)
    Loop(base, Run(tmp_path / "base"), seed_rows)()
    assert ran == [s.key for s in run_stages(base)]
    return base, tmp_path / "base", seed_rows, ran


@pytest.mark.slow
def test_resuming_under_a_changed_field_reruns_exactly_those_stages(finished_run, tmp_path):
    base, run_dir, seed_rows, ran = finished_run
    problems = []
    for path, value, annotation, _owner in _leaves(base):
        after = _change("tiny-cpu", path, value, annotation)
        if not isinstance(after, Recipe):
            continue  # skipped, or not valid in this base (the walk above names those)
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run_dir, copy)
        ran.clear()
        Loop(after, Run(copy), seed_rows)()
        old_keys = {s.key for s in run_stages(base)}
        expected = _expected(base, after) | {s.key for s in run_stages(after) if s.key not in old_keys}
        if set(ran) != expected:
            problems.append(f"{path}: re-ran {sorted(ran)}, expected {sorted(expected)}")
    assert not problems, "\n".join(problems)


def test_one_seed_rule_gives_every_stage_its_own_seed():
    """Each stage's seed comes from the recipe's seed and its key (synpo.run.stage_seed): with seed 0
    no two stages of a run share one (seed + t and seed * 1000 + t used to give round 1's seed-answer
    sampling and its refinement the same seed), except the evaluation, which scores the same items
    with the same sampling every round, and the seed-prompt draw, one order that rounds slice."""
    from synpo.run import stage_seed

    for overrides in ([], ["prompt_generator.enabled=false"], ["pairs.strategy=sampling_ranking"]):
        recipe = load_recipe(RECIPE, ["seed=0", *overrides], check_files=False)
        stages = run_stages(recipe)
        shared = [s for s in stages if "/eval/" in s.key or type(s.inputs).__name__ == "SeedPrompts"]
        own = [s.inputs.seed for s in stages if s not in shared]
        assert len(own) == len(set(own)), overrides
        assert len({s.inputs.seed for s in shared if "/eval/" in s.key}) == len(recipe.eval.suites)
        assert {s.inputs.seed for s in stages} & {s.inputs.seed for s in run_stages(
            load_recipe(RECIPE, ["seed=1", *overrides], check_files=False))} == set()
    # streams inside a stage: named, never arithmetic on the stage's seed
    assert len({stage_seed(5, name) for name in ("initial", "policy", "sampling", "keep", "data", "train")}) == 6
