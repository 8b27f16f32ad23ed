"""Training stages: G and R_t (SFT), θ_t (DPO / SimPO) — how each job is launched.

The job itself is `synpo.training.trainers.train(job)`, a `TrainingJob`. Here we decide where it
runs: in this process (CPU default), as a child process (`runtime.isolate`, so a GPU's memory is
returned when it exits), or under `accelerate launch` when the train section names an
accelerate config or several processes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from synpo.errors import UserError
from synpo.io import write_jsonl
from synpo.processes import run_child
from synpo.recipe import Recipe, TrainConfig, resolve_path
from synpo.training.distributed import accelerate_command, read_accelerate_config, threads_per_rank
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


def run_training(job: TrainingJob, *, isolate: Literal["auto", "always", "never"], logs: Path) -> dict:
    """Run the job in this process, as a child (`isolate`), or under accelerate launch; returns its metrics."""
    acc = read_accelerate_config(job.train)
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


# temporary: the coordinator replaces these callers
def _job(recipe: Recipe, cfg: TrainConfig, kind: str, model: str, data: Path, output: Path, work: Path, seed: int,
         logs: Path) -> TrainingJob:
    return TrainingJob(kind=kind, model=model, base=recipe.model, data=str(data), output=str(output),
                       work_dir=str(work), seed=seed, merge=kind == "preference", train=cfg,
                       threads=recipe.runtime.threads, tracking=tracking_for(recipe.logging.report_to, logs))


# temporary: the coordinator replaces these callers
def sft_stage(recipe: Recipe, cfg: TrainConfig, rows: list[dict], output: Path, work: Path, seed: int,
              logs: Path) -> dict:
    """Fine-tune θ0 on prompt/completion rows; the output is an adapter (LoRA) or a model."""
    if not rows:
        raise UserError(f"{output.name}: no training rows (check the seed set and the gap thresholds)")
    data = work / "train.jsonl"
    write_jsonl(data, rows)
    job = _job(recipe, cfg, "sft", resolve_path(recipe.model.path), data, output, work, seed, logs)
    metrics = run_training(job, isolate=recipe.runtime.isolate, logs=logs)
    return {"rows": len(rows), "start": job.model, **metrics}  # always θ0 (the paper trains G and R_t from it)


# temporary: the coordinator replaces these callers
def policy_stage(recipe: Recipe, dataset: Path, start: str, output: Path, work: Path, seed: int, logs: Path) -> dict:
    """θ_t by DPO / SimPO on D, from θ0 or θ_{t-1}; saved merged."""
    job = _job(recipe, recipe.train, "preference", start, dataset, output, work, seed, logs)
    return run_training(job, isolate=recipe.runtime.isolate, logs=logs)
