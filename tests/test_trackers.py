"""W&B (offline) and MLflow (its local SQLite store) get what TensorBoard gets: the loop's per-round
metrics with the round as the step, and the policy trainer's losses, all under the run directory.

Skipped unless wandb and mlflow are installed (`pip install wandb mlflow`, see .ci/run)."""

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from synpo.io import read_jsonl
from tests.conftest import MINI, TINY_RECIPE, child_env

# slow: one loop round with both trackers on (about 35 s on 2 cores), shared by the two tests
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (importlib.util.find_spec("wandb") and importlib.util.find_spec("mlflow")),
                                 reason="wandb and mlflow are not installed")]

QUICK = ["prompt_generator.enabled=false", "improver.trained=false", "prompt_generator.num_prompts=48",
         "eval.limit=32", "logging.report_to=[wandb,mlflow]"]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    """One round reporting to W&B offline and to MLflow, run from a directory of its own (nothing of
    the trackers' may land there)."""
    cwd = tmp_path_factory.mktemp("tracked")
    run_dir = cwd / "run"
    cmd = [sys.executable, "-m", "synpo.iterate", str(TINY_RECIPE), "--run-dir", str(run_dir)]
    for o in [*MINI, *QUICK]:
        cmd += ["--set", o]
    env = {k: v for k, v in child_env().items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]
    return run_dir


def _records(path: Path):
    """The records of a .wandb file: W&B's LevelDB-log format (a 7-byte header, then 32 KiB blocks of
    chunks, each with a checksum, a length and a FULL / FIRST / MIDDLE / LAST kind), as protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _wandb_runs(run_dir: Path) -> dict[str, dict]:
    """{display name: {"group", "history": [row, ...]}} over every offline run under RUN_DIR/tracking."""
    runs: dict[str, dict] = {}
    for path in sorted((run_dir / "tracking").rglob("run-*.wandb")):
        name = None
        for r in _records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                name = r.run.display_name
                runs.setdefault(name, {"group": r.run.run_group, "history": []})
            elif kind == "history":
                runs[name]["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                              for i in r.history.item})
    return runs


def _exact_match(run_dir: Path) -> dict[int, float]:
    return {r["round"]: r["metrics"]["exact_match"] for r in read_jsonl(run_dir / "metrics.jsonl")}


def test_wandb_offline_runs_hold_the_rounds_metrics_and_the_policy_loss(tracked_run):
    runs = _wandb_runs(tracked_run)
    name = tracked_run.name
    loop = runs[f"{name}/loop"]
    assert loop["group"] == name
    logged = {row["_step"]: row for row in loop["history"]}
    assert logged.keys() == {0, 1}  # the round is the step, so a later `wandb sync` keeps both
    assert {t: row["toy/exact_match"] for t, row in logged.items()} == pytest.approx(_exact_match(tracked_run))
    assert logged[1]["data/policy_pairs"] > 0
    policy = runs[f"{name}/round_01_policy"]
    assert policy["group"] == name
    losses = [row["train/loss"] for row in policy["history"] if "train/loss" in row]
    assert losses and all(v > 0 for v in losses)


def test_mlflow_store_holds_the_rounds_metrics_and_the_policy_loss(tracked_run):
    from mlflow.tracking import MlflowClient

    from synpo.training.trainers import mlflow_store

    client = MlflowClient(tracking_uri=mlflow_store(tracked_run / "tracking"))
    experiment = client.get_experiment_by_name(tracked_run.name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    loop = runs[f"{tracked_run.name}/loop"].info.run_id
    history = {m.step: m.value for m in client.get_metric_history(loop, "toy/exact_match")}
    assert history == pytest.approx(_exact_match(tracked_run)) and history.keys() == {0, 1}
    policy = runs[f"{tracked_run.name}/round_01_policy"].info.run_id
    losses = client.get_metric_history(policy, "loss")
    assert losses and all(m.value > 0 for m in losses)
