"""The stages of a round, one module each; each is a function of its own typed inputs, the models and
artifacts it reads, its seed (inside its inputs) and paths. Only synpo.iterate reads the recipe.

Shared here: how the three training stages (G, R_t, θ_t) hand a job to synpo.training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synpo.recipe import ModelConfig, PolicyTrainConfig, TrainConfig


@dataclass(frozen=True)
class Launch:
    """Where a training job runs and reports (no part of what it computes, so of no fingerprint)."""

    isolate: str = "auto"
    threads: int | None = None
    report_to: tuple[str, ...] = ()


def train(kind: str, model: str, data: Path, cfg: TrainConfig | PolicyTrainConfig, base: ModelConfig, seed: int,
          out: Path, work: Path, launch: Launch, logs: Path) -> dict:
    """Fine-tune `model` on the rows in `data` (SFT, or preference optimisation); `out` gets the result,
    merged for the policy, an adapter or a model for G and R_t. Returns the job's metrics."""
    from synpo.stages.train import run_training, tracking_for
    from synpo.training.job import TrainingJob

    job = TrainingJob(kind=kind, model=str(model), base=base, data=str(data), output=str(out), work_dir=str(work),
                      seed=seed, merge=kind == "preference", train=cfg, threads=launch.threads,
                      tracking=tracking_for(list(launch.report_to), logs))
    return run_training(job, isolate=launch.isolate, logs=logs)
