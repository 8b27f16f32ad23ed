"""What a judged suite reads: its own inputs, never the whole recipe."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from synpo.recipe import EngineConfig, EvalConfig


class SuiteInputs(BaseModel):
    """Everything a judged suite reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    eval: EvalConfig
    engine: EngineConfig
    """The engine answering (the recipe's eval.engine, else its top-level engine): its shard_size."""
    seed: int
    """Seeds the answers' sampling, the eval.limit subsample, AlpacaEval's order of the two outputs and
    the judge's requests."""
    model_name: str
    """The evaluated model's name in the output files, e.g. "tiny-cpu-round_02"."""
