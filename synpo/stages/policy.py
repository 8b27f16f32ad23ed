"""Step 6: θ_t by preference optimisation (SimPO / DPO; or SFT on the chosen side, a control) on D,
the union of every round's pairs so far, from θ0 (the paper) or θ_{t-1}; saved merged."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from synpo.errors import UserError
from synpo.recipe import ModelConfig, PolicyTrainConfig
from synpo.stages.pairs import write_dataset
from synpo.stages.train import Launch, train


class PolicyTraining(BaseModel):
    model_config = ConfigDict(frozen=True)
    round: int
    train: PolicyTrainConfig
    base: ModelConfig
    seed: int


def train_policy(inputs: PolicyTraining, start: str, round_pairs: list[Path], dataset: Path, out: Path, work: Path,
                 launch: Launch, logs: Path) -> dict:
    """`start` is θ0 or θ_{t-1}; `dataset` gets D (pairs.jsonl and a `datasets` copy) before training."""
    n = write_dataset(round_pairs, dataset)
    if n == 0:
        raise UserError(f"round {inputs.round}: D has no pairs to train on; lower pairs.gap or raise "
                        "prompt_generator.num_prompts")
    metrics = train("preference", start, dataset / "pairs.jsonl", inputs.train, inputs.base, inputs.seed, out, work,
                    launch, logs)
    return {"pairs": n, "start": start, **metrics}  # θ0 or θ_{t-1}: recorded in state.json
