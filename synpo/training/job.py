"""A training job: the one description of what `synpo.training.trainers.train` runs.

The loop builds a `TrainingJob` from the recipe; the job travels to a child process (or to every
rank under `accelerate launch`) as JSON (`job.model_dump_json()`) and is read back, validated once,
with `TrainingJob.model_validate_json`. Its `train` section keeps the recipe's option names; the
one translation into TRL's config fields is `synpo.training.trainers.trl_arguments`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, model_validator

from synpo.recipe import ModelConfig, PolicyTrainConfig, TrainConfig


class Tracking(BaseModel):
    """Where this job reports (the recipe's `logging.report_to`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    report_to: list[str]
    dir: str
    """RUN_DIR/tracking."""
    stage: str
    """The stage's name in the trackers, its log file's stem (e.g. round_01_policy)."""
    run: str
    """The run directory's name."""


_POLICY_FIELDS = PolicyTrainConfig.model_fields.keys() - TrainConfig.model_fields.keys()


def _section_kind(section) -> str:
    """Which section a train section is: the policy's when it has the policy's own fields (loss,
    beta, ...), so that a mistake in it is reported against PolicyTrainConfig alone."""
    if isinstance(section, dict):
        return "preference" if section.keys() & _POLICY_FIELDS else "sft"
    return "preference" if isinstance(section, PolicyTrainConfig) else "sft"


class TrainingJob(BaseModel):
    """One training stage's inputs: G and R_t (kind sft, from θ0), θ_t (kind preference)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sft", "preference"]
    model: str
    """The start weights: θ0's path, or θ_{t-1}'s directory."""
    base: ModelConfig
    """θ0's settings from the recipe: dtype, chat_template, trust_remote_code."""
    data: str
    """JSONL: prompt/completion rows (sft) or prompt/chosen/rejected rows (preference)."""
    output: str
    work_dir: str
    seed: int
    merge: bool
    """Save a LoRA adapter merged into its base (the policy θ_t) rather than the adapter alone."""
    train: Annotated[Annotated[TrainConfig, Tag("sft")] | Annotated[PolicyTrainConfig, Tag("preference")],
                     Discriminator(_section_kind)]
    """The recipe's train section: a PolicyTrainConfig when kind is preference."""
    threads: int | None = None
    """torch threads of this process (of each rank under accelerate launch)."""
    tracking: Tracking | None = None

    @model_validator(mode="after")
    def _train_section_fits_kind(self):
        policy = isinstance(self.train, PolicyTrainConfig)
        if self.kind == "preference" and not policy:
            raise ValueError("kind preference needs the policy's train section (loss, beta, gamma, ...), "
                             "got an SFT train section")
        if self.kind == "sft" and policy:
            raise ValueError("kind sft takes an SFT train section, got the policy's (with loss, beta, ...); "
                             "for SFT on the chosen answers use kind preference with loss sft")
        return self
