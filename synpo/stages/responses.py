"""Step 3: answers on this round's synthetic prompts.

synpo: y_{t-1} ~ π_{t-1}(x) and y_0 ~ π_0(x). In round 1 π_{t-1} is π_0, so one set of
answers serves as both (π_0 answers each prompt once).
sampling_ranking (the paper's baseline): k samples of π_{t-1} per prompt instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from synpo.engines import Request, generate, sampling_of
from synpo.io import read_jsonl, write_jsonl
from synpo.recipe import EngineConfig, ModelConfig, SamplingConfig
from synpo.run import stage_seed


class Answering(BaseModel):
    """Step 3: answers on this round's prompts."""

    model_config = ConfigDict(frozen=True)
    round: int
    strategy: Literal["synpo", "sampling_ranking"]
    k: int | None
    """sampling_ranking: samples of π_{t-1} per prompt (None for synpo)."""
    policy_is_initial: bool
    """π_{t-1} is π_0 (round 1): one set of answers serves as both."""
    sampling: SamplingConfig
    base: ModelConfig
    engine: EngineConfig
    seed: int


def generate_responses(inputs: Answering, policy: str, initial: str, prompts: Path, out: Path, work: Path) -> dict:
    t = inputs.round
    rows = read_jsonl(prompts)
    requests = [Request(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in rows]

    def answers(model: str, n: int, seed: int, stream: str, desc: str):
        return generate(model, requests, sampling_of(inputs.sampling, seed, n=n), base=inputs.base,
                        engine=inputs.engine, shard_dir=work / stream, desc=desc)

    sampling = inputs.sampling.model_dump()
    if inputs.strategy == "sampling_ranking":
        samples = answers(policy, inputs.k, stage_seed(inputs.seed, "policy"), "policy",
                          f"round {t}: π_{t - 1} x{inputs.k}")
        out_rows = [{"id": r["id"], "prompt": r["prompt"], "samples": c.texts, "finish_reasons": c.finish_reasons,
                     "round": t, "stage": "responses", "model": f"policy_{t - 1}", "sampling": sampling}
                    for r, c in zip(rows, samples)]
    else:
        initial_answers = answers(initial, 1, stage_seed(inputs.seed, "initial"), "initial", f"round {t}: π_0")
        if inputs.policy_is_initial:
            policy_answers = initial_answers
        else:
            policy_answers = answers(policy, 1, stage_seed(inputs.seed, "policy"), "policy",
                                     f"round {t}: π_{t - 1}")
        out_rows = [{"id": r["id"], "prompt": r["prompt"],
                     "response": p.text, "response_finish": p.finish_reasons[0],
                     "initial_response": i.text, "initial_finish": i.finish_reasons[0],
                     "round": t, "stage": "responses", "model": {"response": f"policy_{t - 1}",
                                                                  "initial_response": "policy_0"},
                     "sampling": sampling}
                    for r, p, i in zip(rows, policy_answers, initial_answers)]
    write_jsonl(out, out_rows)
    return {"prompts": len(rows)}
