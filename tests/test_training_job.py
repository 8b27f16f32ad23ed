"""The training job: one typed description that travels as JSON to a child process (or to every
rank under accelerate launch) and is validated once there; a job that does not fit fails by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_env
from pydantic import ValidationError
from training_utils import preference_rows, sft_rows, tiny_policy, training_job

from synpo.recipe import PolicyTrainConfig, TrainConfig
from synpo.stages.train import run_training, tracking_for
from synpo.training.job import TrainingJob

torch.set_num_threads(1)


def _policy_job(tmp_path: Path) -> TrainingJob:
    """A preference job with every kind of field away from its default: the subclass section's own
    fields (loss, beta, gamma), a nested section (periodic), floats, a list, the tracking."""
    job = training_job(tmp_path, tmp_path / "model", "preference", preference_rows(4), dtype="bfloat16",
                       chat_template="{{ messages }}", loss="dpo", beta=0.25, gamma=0.7, nll_weight=0.3,
                       adapter="periodic_lora", periodic={"stages": 3, "momentum": 0.5}, learning_rate=3.5e-6,
                       lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]})
    logs = tmp_path / "run" / "logs" / "round_02_policy.log"
    return job.model_copy(update={"tracking": tracking_for(["tensorboard", "wandb"], logs), "seed": 1234})


def test_a_job_reaches_the_child_entry_point_unchanged(tmp_path, monkeypatch):
    """run_training writes the job; the child's entry point (`python -m synpo.training.launch JOB.json`)
    reads back an equal job, the policy's section still a PolicyTrainConfig."""
    import synpo.stages.train as stage
    import synpo.training.launch as launch

    seen = {}
    monkeypatch.setattr(stage, "run_child", lambda cmd, log, env=None: seen.update(cmd=cmd))
    for job in (_policy_job(tmp_path), training_job(tmp_path, tmp_path / "model", "sft", sft_rows(2), name="sft")):
        Path(job.output).mkdir(parents=True, exist_ok=True)
        (Path(job.output) / "train_metrics.json").write_text('{"steps": 3}')
        assert run_training(job, isolate="always", logs=tmp_path / "job.log") == {"steps": 3}
        assert seen["cmd"][:3] == [sys.executable, "-m", "synpo.training.launch"]

        received = []
        monkeypatch.setattr(launch, "train", received.append)
        monkeypatch.setattr(sys, "argv", ["launch", seen["cmd"][-1]])
        launch.main()
        assert received == [job]
        assert type(received[0].train) is type(job.train)
        assert received[0].model_dump_json() == job.model_dump_json()
    assert type(received[0].train) is TrainConfig


def test_tracking_names_the_stage_after_its_log_and_the_run_after_its_directory(tmp_path):
    logs = tmp_path / "my-run" / "logs" / "round_01_improver.log"
    tracking = tracking_for(["tensorboard"], logs)
    assert (tracking.stage, tracking.run, tracking.dir) == ("round_01_improver", "my-run",
                                                            str(tmp_path / "my-run" / "tracking"))
    assert tracking_for([], logs) is None  # no trackers: the job reports nowhere


@pytest.mark.slow
def test_a_job_trained_in_a_child_process_ends_where_one_trained_here_ends(tmp_path, monkeypatch):
    """The real child (runtime.isolate: always): same steps, loss and weights as the same job in-process."""
    from synpo.training.trainers import train

    policy = tiny_policy(tmp_path / "policy")
    here = training_job(tmp_path, policy, "preference", preference_rows(8), name="here", loss="dpo", beta=0.1,
                        adapter="full", max_steps=2)
    child = training_job(tmp_path, policy, "preference", preference_rows(8), name="child", loss="dpo", beta=0.1,
                         adapter="full", max_steps=2)
    for key, value in child_env().items():
        monkeypatch.setenv(key, value)
    in_process = train(here)
    in_child = run_training(child, isolate="always", logs=tmp_path / "child.log")
    assert in_child["steps"] == in_process["steps"] == 2
    assert in_child["train_loss"] == in_process["train_loss"]
    weights = [(Path(job.output) / "model.safetensors").read_bytes() for job in (child, here)]
    assert weights[0] == weights[1]


def test_a_job_that_does_not_fit_fails_naming_the_problem(tmp_path):
    sft = training_job(tmp_path, tmp_path / "model", "sft", sft_rows(2), name="sft")
    policy = training_job(tmp_path, tmp_path / "model", "preference", preference_rows(2), name="policy")
    with pytest.raises(ValidationError, match="kind preference needs the policy's train section"):
        TrainingJob.model_validate({**sft.model_dump(), "kind": "preference"})
    with pytest.raises(ValidationError, match="kind sft takes an SFT train section"):
        TrainingJob.model_validate({**policy.model_dump(), "kind": "sft"})
    with pytest.raises(ValidationError, match=r"epochs_typo\n  Extra inputs are not permitted"):
        TrainingJob.model_validate({**sft.model_dump(), "epochs_typo": 3})
    # A mistake in the policy's section is reported against that section alone, by its field's path.
    with pytest.raises(ValidationError, match=r"^1 validation error.*\ntrain\.preference\.loss\n  Input should be"):
        TrainingJob.model_validate({**policy.model_dump(), "train": {**policy.train.model_dump(), "loss": "ipo"}})
    with pytest.raises(ValidationError, match="frozen"):
        policy.seed = 1  # a job is built once and read, never edited on the way
    assert isinstance(policy.train, PolicyTrainConfig)


def test_the_child_rejects_a_bad_job_file_before_loading_anything(tmp_path):
    sft = training_job(tmp_path, tmp_path / "model", "sft", sft_rows(2))
    bad = tmp_path / "job.json"
    bad.write_text(json.dumps({**json.loads(sft.model_dump_json()), "kind": "preference"}))
    proc = subprocess.run([sys.executable, "-m", "synpo.training.launch", str(bad)], capture_output=True, text=True,
                          env=child_env(), timeout=300)
    assert proc.returncode != 0
    assert "kind preference needs the policy's train section" in proc.stderr
    assert not Path(sft.output).exists()
