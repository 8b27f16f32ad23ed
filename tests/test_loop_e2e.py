"""The loop end to end on the tiny model: artifacts, determinism, resume after SIGKILL at several moments."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from synpo.io import read_jsonl
from tests.conftest import MINI, TINY_RECIPE, child_env, run_iterate

# Policy training long enough to be killed in the middle, with a resumable checkpoint at step 20.
KILL_TEST = ["train.max_steps=60", "train.checkpoint_steps=20"]
ROW_FILES = ["round_01/prompts.jsonl", "round_01/improver_data.jsonl", "round_01/responses.jsonl",
             "round_01/refined.jsonl", "round_01/pairs.jsonl", "dataset/pairs.jsonl", "metrics.jsonl"]


def rows(run_dir: Path, name: str) -> list[dict]:
    return read_jsonl(run_dir / name)


def test_run_directory_is_complete(mini_run):
    for name in ["recipe.yaml", "state.json", "metrics.jsonl", "report.md", "prompt_generator",
                 "round_01/improver", "round_01/policy/model.safetensors", "round_01/policy/tokenizer.json",
                 "round_01/policy/chat_template.jinja", "round_01/policy/generation_config.json",
                 "round_01/eval/toy/metrics.json", "dataset/hf", *ROW_FILES]:
        assert (mini_run / name).exists(), name
    state = json.loads((mini_run / "state.json").read_text())
    assert list(state["stages"]) == [
        "round_00/eval/toy", "prompt_generator", "round_01/prompts", "round_01/improver_data",
        "round_01/improver", "round_01/responses", "round_01/refined", "round_01/pairs", "round_01/policy",
        "round_01/eval/toy"]
    metrics = rows(mini_run, "metrics.jsonl")
    assert [(m["round"], m["suite"]) for m in metrics] == [(0, "toy"), (1, "toy")]
    assert set(metrics[0]["metrics"]) == {"exact_match", "score", "win_rate"}
    assert not list(mini_run.glob(".work/*"))  # finished stages leave no scratch behind


def test_pairs_are_trl_conversational_with_provenance(mini_run):
    pairs = rows(mini_run, "round_01/pairs.jsonl")
    assert pairs
    for p in pairs:
        assert [m["role"] for m in p["prompt"]] == ["user"]
        assert [m["role"] for m in p["chosen"]] == [m["role"] for m in p["rejected"]] == ["assistant"]
        assert p["round"] == 1 and p["chosen_model"] == "improver_1" and p["rejected_model"] == "policy_0"
    from datasets import load_from_disk

    ds = load_from_disk(str(mini_run / "dataset" / "hf"))
    assert len(ds) == len(rows(mini_run, "dataset/pairs.jsonl")) == len(pairs)


def test_resolved_recipe_is_saved(mini_run):
    import yaml

    saved = yaml.safe_load((mini_run / "recipe.yaml").read_text())
    assert saved["rounds"] == 1 and saved["prompt_generator"]["num_prompts"] == 120


def test_rerun_skips_everything_and_a_changed_section_reruns_downstream(mini_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(mini_run, run_dir)
    before = {n: (run_dir / n).read_text() for n in ROW_FILES}
    proc = run_iterate(run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {n: (run_dir / n).read_text() for n in ROW_FILES} == before
    state = json.loads((run_dir / "state.json").read_text())
    finished = {k: v["finished"] for k, v in state["stages"].items()}

    proc = run_iterate(run_dir, "pairs.per_round=3")  # changes the pairs stage and what follows
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((run_dir / "state.json").read_text())
    rerun = {k for k, v in state["stages"].items() if v["finished"] != finished[k]}
    assert rerun == {"round_01/pairs", "round_01/policy", "round_01/eval/toy"}
    assert len(rows(run_dir, "round_01/pairs.jsonl")) == 3


def _killed_at(run_dir: Path, point: str) -> None:
    """Run the mini run until it SIGKILLs itself at `point` (tests/killed_run.py)."""
    cmd = [sys.executable, str(Path(__file__).with_name("killed_run.py")), point, str(TINY_RECIPE),
           "--run-dir", str(run_dir)]
    for o in [*MINI, *KILL_TEST]:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=900)
    assert proc.returncode == -signal.SIGKILL, f"{point}: the run ended before the kill point\n{proc.stderr[-2000:]}"


def _temporaries(run_dir: Path) -> list[Path]:
    """Leftovers of interrupted writes: atomic temporaries, swapped-out copies, stage scratch."""
    return [*run_dir.rglob(".*.tmp"), *run_dir.rglob(".*.old"), *(run_dir / ".work").glob("*")]


@pytest.mark.slow
def test_sigkill_at_several_moments_then_resume(tmp_path):
    """SIGKILL in generation, between two stages, while D is written and in policy training, each
    resumed by the next run; the last run finishes. Its rows, D and metrics equal an uninterrupted
    run's and no temporary file is left."""
    run_dir, work = tmp_path / "killed", tmp_path / "killed" / ".work"
    _killed_at(run_dir, "generation")
    shards = list((work / "round_01__responses" / "initial").glob("shard-*.jsonl"))
    assert [p.name for p in shards] == ["shard-00000.jsonl"]  # 1 of 4 shards (120 prompts, 32 a shard)
    assert not (run_dir / "round_01" / "responses.jsonl").exists()

    _killed_at(run_dir, "between_stages")
    stages = json.loads((run_dir / "state.json").read_text())["stages"]
    assert list(stages)[-1] == "round_01/refined" and (work / "round_01__refined").exists()

    _killed_at(run_dir, "dataset_write")
    assert [p.name for p in run_dir.glob(".dataset.*.tmp")] and not (run_dir / "dataset").exists()

    _killed_at(run_dir, "training")
    assert (work / "round_01__policy" / "trainer" / "checkpoint-20" / "trainer_state.json").exists()
    assert not (run_dir / "round_01" / "policy").exists()  # killed mid-training (step 20 of 60)

    proc = run_iterate(run_dir, *KILL_TEST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = tmp_path / "reference"
    proc = run_iterate(reference, *KILL_TEST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in [*ROW_FILES, "dataset/info.json"]:
        got, want = rows(run_dir, name) if name.endswith(".jsonl") else [json.loads((run_dir / name).read_text())], \
            rows(reference, name) if name.endswith(".jsonl") else [json.loads((reference / name).read_text())]
        assert len({json.dumps(r, sort_keys=True) for r in got}) == len(got), f"{name}: duplicated rows"
        assert got == want, name
    from datasets import load_from_disk

    assert load_from_disk(str(run_dir / "dataset" / "hf")).to_list() == \
        load_from_disk(str(reference / "dataset" / "hf")).to_list()
    assert _temporaries(run_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sampling_ranking"])
def test_sampling_ranking_baseline_runs(tmp_path, strategy):
    proc = run_iterate(tmp_path / "sr", f"pairs.strategy={strategy}", "pairs.k=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    pairs = rows(tmp_path / "sr", "round_01/pairs.jsonl")
    assert pairs and all(p["chosen_model"] == p["rejected_model"] == "policy_0" for p in pairs)
    assert not (tmp_path / "sr" / "round_01" / "improver").exists()
