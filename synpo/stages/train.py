"""How a training stage (G and R_t: SFT; θ_t: DPO / SimPO) hands its job to synpo.training.

`train(...)` describes the job as a `TrainingJob` and runs it; the job itself is
`synpo.training.trainers.train(job)`. Here we decide where it runs: in this process (CPU default),
as a child process (`runtime.isolate`, so a GPU's memory is returned when it exits), or under
`accelerate launch` when the train section names an accelerate config or several processes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from synpo.processes import run_child
from synpo.recipe import ModelConfig, PolicyTrainConfig, TrainConfig
from synpo.training.distributed import accelerate_command, read_accelerate_config, threads_per_rank, visible_gpus
from synpo.training.job import Tracking, TrainingJob


def should_isolate(isolate: Literal["auto", "always", "never"]) -> bool:
    if isolate != "auto":
        return isolate == "always"
    import torch

    return torch.cuda.is_available()


def tracking_for(report_to: list[str], logs: Path) -> Tracking | None:
    """Where a job reports (`logging.report_to`): the stage is named after its log file
    (RUN_DIR/logs/<stage>.log), the run after its run directory. None when report_to is empty."""
    if not report_to:
        return None
    run_dir = logs.parent.parent
    return Tracking(report_to=report_to, dir=str(run_dir / "tracking"), stage=logs.stem, run=run_dir.resolve().name)


def run_training(job: TrainingJob, *, isolate: Literal["auto", "always", "never"], logs: Path,
                 gpus: int | None = None) -> dict:
    """Run the job in this process, as a child (`isolate`), or under accelerate launch; returns its metrics.
    `gpus`: runtime.gpus (None: the visible GPUs)."""
    acc = read_accelerate_config(job.train, gpus or (visible_gpus() if job.train.accelerate_config else None))
    if acc.distributed:
        job = job.model_copy(update={"threads": threads_per_rank(job.threads, acc.processes)})
    job_path = Path(job.work_dir) / "job.json"
    job_path.write_text(job.model_dump_json(indent=2))
    if acc.distributed:
        run_child(accelerate_command(acc) + ["-m", "synpo.training.launch", str(job_path)], logs,
                  env={"OMP_NUM_THREADS": str(job.threads)})
    elif should_isolate(isolate):
        run_child([sys.executable, "-m", "synpo.training.launch", str(job_path)], logs)
    else:
        from synpo.training.trainers import train

        return train(job)
    return json.loads((Path(job.output) / "train_metrics.json").read_text())


@dataclass(frozen=True)
class Launch:
    """Where a training job runs and reports (no part of what it computes, so of no fingerprint)."""

    isolate: Literal["auto", "always", "never"] = "auto"
    threads: int | None = None
    report_to: tuple[str, ...] = ()
    gpus: int | None = None


def train(kind: Literal["sft", "preference"], model: str, data: Path, cfg: TrainConfig | PolicyTrainConfig,
          base: ModelConfig, seed: int, out: Path, work: Path, launch: Launch, logs: Path) -> dict:
    """Fine-tune `model` on the rows in `data` (SFT, or preference optimisation); `out` gets the result,
    merged for the policy, an adapter or a model for G and R_t. Returns the job's metrics."""
    job = TrainingJob(kind=kind, model=str(model), base=base, data=str(data), output=str(out), work_dir=str(work),
                      seed=seed, merge=kind == "preference", train=cfg, threads=launch.threads,
                      tracking=tracking_for(list(launch.report_to), logs))
    return run_training(job, isolate=launch.isolate, logs=logs, gpus=launch.gpus)
