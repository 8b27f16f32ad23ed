"""The loop's own figures in the trackers the trainers report to (`logging.report_to`).

Every TRL trainer reports its per-step logs (DPO's rewards, margins, accuracies; the loss) itself,
as the job RUN/STAGE (synpo.training.trainers). This module adds the loop's per-round figures to the
same place, as the job RUN/loop with the round as the step: each suite's headline metrics, the drift
figures (synpo.monitors), the data made (prompts and pairs kept, D's size) and the seconds per stage.
  tensorboard: event files in RUN_DIR/tracking/tensorboard/loop (the stages' beside it);
  wandb: a run named RUN/loop in the group RUN (the project from WANDB_PROJECT, default "synpo");
  mlflow: a run named RUN/loop in the experiment RUN (MLFLOW_TRACKING_URI, default the SQLite store
  RUN_DIR/tracking/mlflow.db).
A round is sent once: RUN_DIR/tracking/loop_logged.json remembers what was sent under which
fingerprint, so a resumed run does not send a round twice (a re-run round is sent again).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from synpo.errors import UserError
from synpo.io import read_json, write_json

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(report_to: list[str]) -> None:
    """A clear error before anything runs when a named tracker's package is missing."""
    for name in report_to:
        package = PACKAGES.get(name, name)
        if importlib.util.find_spec(package) is None:
            raise UserError(f"logging.report_to: {name} needs the package {package}; "
                            f"pip install {package} (or remove it from logging.report_to)")


class LoopTracker:
    def __init__(self, run_dir: Path, report_to: list[str]):
        self.dir = run_dir / "tracking"
        self.run = run_dir.resolve().name
        self.report_to = list(report_to)
        self.sent_path = self.dir / "loop_logged.json"
        if "wandb" in self.report_to:
            # wandb reads its environment once, at the first wandb.init of the process: set here, before the
            # loop's first round, what the trainers' runs (in this process on a CPU) must share with it
            self.dir.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("WANDB_DIR", str(self.dir))
            os.environ.setdefault("WANDB_PROJECT", "synpo")
            os.environ["WANDB_RUN_GROUP"] = self.run

    def log_round(self, t: int, fp: str, values: dict[str, float]) -> None:
        """Send round t's figures (step t) unless they were sent under the same fingerprint."""
        if not self.report_to:
            return
        sent = read_json(self.sent_path) if self.sent_path.exists() else {}
        if sent.get(str(t)) == fp:
            return
        values = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for name in self.report_to:
            getattr(self, f"_{name}", self._unsupported)(name, t, values)
        sent[str(t)] = fp
        write_json(self.sent_path, sent)

    def _unsupported(self, name: str, t: int, values: dict) -> None:
        from synpo.progress import log

        log(f"[yellow]logging.report_to: {name} gets the trainers' logs; the loop's own figures go to "
            "tensorboard, wandb and mlflow only[/yellow]")

    def _tensorboard(self, name: str, t: int, values: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.dir / "tensorboard" / "loop"))
        for tag, value in sorted(values.items()):
            writer.add_scalar(tag, value, global_step=t)
        writer.close()

    def _wandb(self, name: str, t: int, values: dict) -> None:
        import wandb

        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "synpo"), group=self.run, name=f"{self.run}/loop",
                         id=f"{self.run}-loop".replace("/", "-"), resume="allow", dir=str(self.dir), reinit=True)
        run.log({**values, "round": t}, step=t)  # the round as the step: an offline run synced later keeps each
        run.finish()

    def _mlflow(self, name: str, t: int, values: dict) -> None:
        import mlflow

        from synpo.training.trainers import mlflow_store

        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", mlflow_store(self.dir)))
        mlflow.set_experiment(self.run)
        found = mlflow.search_runs(filter_string=f"tags.mlflow.runName = '{self.run}/loop'", output_format="list")
        with mlflow.start_run(run_id=found[0].info.run_id if found else None, run_name=f"{self.run}/loop"):
            mlflow.log_metrics(values, step=t)
