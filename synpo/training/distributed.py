"""How a training job spreads over processes: the train section's accelerate config, read once.

`synpo.stages.train` builds the `accelerate launch` command from it, and `synpo plan` its
memory layout (DDP, DeepSpeed ZeRO, FSDP) from the same reading.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from synpo.errors import UserError
from synpo.recipe import TrainConfig, resolve_path


@dataclass(frozen=True)
class AccelerateConfig:
    path: Path | None
    """The accelerate config file (None: the train section names none)."""
    settings: dict = field(default_factory=dict)
    """Its YAML ({} without a file)."""
    processes: int = 1
    """The section's num_processes, else (with a config file) the run's GPUs, else the file's
    num_processes, else 1."""

    @property
    def distributed(self) -> bool:
        """Launched with `accelerate launch`: a config file is named, or several processes."""
        return self.path is not None or self.processes > 1


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def read_accelerate_config(cfg: TrainConfig, gpus: int | None = None) -> AccelerateConfig:
    """The train section's accelerate config and the number of processes it trains on. `gpus`: the
    run's GPU count (runtime.gpus, or the visible GPUs); with a config file it decides the processes
    unless the section sets num_processes, so every training stage follows one setting."""
    if not cfg.accelerate_config:
        return AccelerateConfig(path=None, processes=cfg.num_processes or 1)
    import yaml

    path = Path(resolve_path(cfg.accelerate_config))
    if not path.is_file():
        raise UserError(f"accelerate_config: file does not exist: {cfg.accelerate_config}")
    settings = yaml.safe_load(path.read_text()) or {}
    return AccelerateConfig(path=path, settings=settings,
                            processes=cfg.num_processes or gpus or int(settings.get("num_processes") or 1))


def accelerate_command(acc: AccelerateConfig) -> list[str]:
    """`accelerate launch` with the config file and/or the process count."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if acc.path is not None:
        cmd += ["--config_file", str(acc.path)]
    else:
        # Only --multi_gpu starts several processes on CPU too (gloo); `--cpu` silently starts one.
        cmd += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(acc.processes)]
    if "main_process_port" not in acc.settings and int(acc.settings.get("num_machines") or 1) == 1:
        cmd += ["--main_process_port", "0"]  # a free port: concurrent jobs on one machine must not collide
    return cmd


def threads_per_rank(requested: int | None, processes: int) -> int:
    """runtime.threads per process, capped so that all ranks together fit the machine's cores
    (two threads per rank on two cores was measured 10x slower than one)."""
    fair = max(1, len(os.sched_getaffinity(0)) // processes)
    return min(requested or fair, fair)
