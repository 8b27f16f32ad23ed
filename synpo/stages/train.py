"""Training stages: G and R_t (SFT), θ_t (DPO / SimPO) — how each job is launched.

The job itself is `synpo.training.trainers.train(spec)`. Here we decide where it runs:
in this process (CPU default), as a child process (`runtime.isolate`, so a GPU's memory is
returned when it exits), or under `accelerate launch` when the train section names an
accelerate config or several processes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from synpo.errors import UserError
from synpo.io import write_jsonl
from synpo.processes import run_child
from synpo.recipe import Recipe, TrainConfig, resolve_path


def should_isolate(recipe: Recipe) -> bool:
    if recipe.runtime.isolate != "auto":
        return recipe.runtime.isolate == "always"
    import torch

    return torch.cuda.is_available()


def _accelerate_command(cfg: TrainConfig) -> tuple[list[str], int]:
    """`accelerate launch` with the recipe's config and/or process count, and the processes it starts."""
    import yaml

    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    file = yaml.safe_load(Path(resolve_path(cfg.accelerate_config)).read_text()) if cfg.accelerate_config else {}
    file = file or {}
    if cfg.accelerate_config:
        cmd += ["--config_file", resolve_path(cfg.accelerate_config)]
    else:
        # Only --multi_gpu starts several processes on CPU too (gloo); `--cpu` silently starts one.
        cmd += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
    processes = cfg.num_processes or int(file.get("num_processes") or 1)
    cmd += ["--num_processes", str(processes)]
    if "main_process_port" not in file and int(file.get("num_machines") or 1) == 1:
        cmd += ["--main_process_port", "0"]  # a free port: concurrent jobs on one machine must not collide
    return cmd, processes


def _threads_per_rank(requested: int | None, processes: int) -> int:
    """runtime.threads per process, capped so that all ranks together fit the machine's cores
    (two threads per rank on two cores was measured 10x slower than one)."""
    fair = max(1, len(os.sched_getaffinity(0)) // processes)
    return min(requested or fair, fair)


def _tracking(recipe: Recipe, logs: Path) -> dict:
    """Where this job reports (`logging.report_to`): the stage is named after its log file
    (RUN_DIR/logs/<stage>.log), the run after its run directory."""
    run_dir = logs.parent.parent
    return {"report_to": recipe.logging.report_to, "dir": str(run_dir / "tracking"), "stage": logs.stem,
            "run": run_dir.resolve().name}


def launch_training(recipe: Recipe, cfg: TrainConfig, spec: dict, logs: Path) -> dict:
    spec = {**spec, "train": cfg.model_dump(mode="json"), "dtype": recipe.model.dtype,
            "trust_remote_code": recipe.model.trust_remote_code, "chat_template": recipe.model.chat_template,
            "threads": recipe.runtime.threads, "tracking": _tracking(recipe, logs)}
    spec_path = Path(spec["work_dir"]) / "spec.json"
    distributed = cfg.accelerate_config or (cfg.num_processes or 1) > 1
    if distributed:
        cmd, processes = _accelerate_command(cfg)
        spec["threads"] = _threads_per_rank(recipe.runtime.threads, processes)
    spec_path.write_text(json.dumps(spec, indent=2))
    if distributed:
        run_child(cmd + ["-m", "synpo.training.launch", str(spec_path)], logs,
                  env={"OMP_NUM_THREADS": str(spec["threads"])})
    elif should_isolate(recipe):
        run_child([sys.executable, "-m", "synpo.training.launch", str(spec_path)], logs)
    else:
        from synpo.training.trainers import train

        return train(spec)
    return json.loads((Path(spec["output"]) / "train_metrics.json").read_text())


def sft_stage(recipe: Recipe, cfg: TrainConfig, rows: list[dict], output: Path, work: Path, seed: int,
              logs: Path) -> dict:
    """Fine-tune θ0 on prompt/completion rows; the output is an adapter (LoRA) or a model."""
    if not rows:
        raise UserError(f"{output.name}: no training rows (check the seed set and the gap thresholds)")
    data = work / "train.jsonl"
    write_jsonl(data, rows)
    spec = {"kind": "sft", "model": resolve_path(recipe.model.path), "data": str(data), "output": str(output),
            "work_dir": str(work), "seed": seed, "merge": False}
    metrics = launch_training(recipe, cfg, spec, logs)
    return {"rows": len(rows), "start": spec["model"], **metrics}  # always θ0 (the paper trains G and R_t from it)


def policy_stage(recipe: Recipe, dataset: Path, start: str, output: Path, work: Path, seed: int, logs: Path) -> dict:
    """θ_t by DPO / SimPO on D, from θ0 or θ_{t-1}; saved merged."""
    spec = {"kind": "preference", "model": start, "data": str(dataset), "output": str(output),
            "work_dir": str(work), "seed": seed, "merge": True}
    metrics = launch_training(recipe, recipe.train, spec, logs)
    return metrics
