"""The response improver R_t (Algorithm 1, steps 1-2) and its use (step 4).

Step 1: π_{t-1} answers every seed prompt; a row (x*, y_{t-1}, y*) is kept when the gold
answer beats the model's by more than τ (`improver.gap`, scorer units).
Step 2: R_t is fine-tuned from θ0 (not θ_{t-1}) to map the improver template filled with
(x*, y_{t-1}) to y*.
Step 4: R_t rewrites each π_{t-1} answer on this round's synthetic prompts.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from synpo.engines import Request, generate, sampling_of
from synpo.errors import UserError
from synpo.io import read_jsonl, write_jsonl
from synpo.recipe import EngineConfig, ModelConfig, SamplingConfig, ScorerConfig, TrainConfig
from synpo.run import stage_seed
from synpo.scoring import finite_mean, score_gaps
from synpo.stages.train import Launch, train
from synpo.templates import render


class ImproverData(BaseModel):
    """Step 1: I_t, the seed rows whose gold answer beats π_{t-1}'s by more than τ."""

    model_config = ConfigDict(frozen=True)
    round: int
    gap: float
    keep_below_gap: float
    seed_sampling: SamplingConfig
    scorer: ScorerConfig
    base: ModelConfig
    engine: EngineConfig
    seed: int


class ImproverTraining(BaseModel):
    """Step 2: R_t <- SFT(θ0, (x*, y_{t-1}) -> y*)."""

    model_config = ConfigDict(frozen=True)
    round: int
    train: TrainConfig
    base: ModelConfig
    seed: int


class Refinement(BaseModel):
    """Step 4: ỹ ~ R_t(x, y_{t-1}) on this round's prompts (θ0 itself when `trained` is false)."""

    model_config = ConfigDict(frozen=True)
    round: int
    sampling: SamplingConfig
    trained: bool
    base: ModelConfig
    engine: EngineConfig
    seed: int


def improver_messages(prompt: str, draft: str) -> list[dict]:
    return [{"role": "user", "content": render("improver", prompt=prompt, response=draft)}]


def improver_data(inputs: ImproverData, policy: str, seed_rows: list[dict], out: Path, work: Path, scorer) -> dict:
    """Step 1: improver_data.jsonl of (prompt, draft y_{t-1}, target y*) rows over the gap."""
    t = inputs.round
    requests = [Request(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in seed_rows]
    completions = generate(policy, requests, sampling_of(inputs.seed_sampling, stage_seed(inputs.seed, "sampling")),
                           base=inputs.base, engine=inputs.engine, shard_dir=work / "shards",
                           desc=f"round {t}: π_{t - 1} on seed")
    # A draft cut at max_new_tokens is not an answer R_t will be asked to improve (step 4 rewrites
    # finished answers; unfinished ones drop before pairs): it would teach rewriting half-answers.
    finished = [(r, c.text) for r, c in zip(seed_rows, completions) if c.finish_reasons[0] == "stop"]
    gaps = score_gaps(scorer, [r["prompt"] for r, _ in finished], [r["response"] for r, _ in finished],
                      [d for _, d in finished]) if finished else []
    rng, keep_below = random.Random(stage_seed(inputs.seed, "keep")), inputs.keep_below_gap
    rows = [{"id": r["id"], "prompt": r["prompt"], "draft": d, "target": r["response"], "gap": round(g, 4),
             "round": t, "stage": "improver_data", "model": f"policy_{t - 1}"}
            for (r, d), g in zip(finished, gaps)
            if not math.isnan(g) and (g > inputs.gap or (keep_below and rng.random() < keep_below))]
    write_jsonl(out, rows)
    return {"seed": len(seed_rows), "dropped_unfinished_drafts": len(seed_rows) - len(finished),
            "over_gap": sum(g > inputs.gap for g in gaps), "kept": len(rows),
            "unscored": sum(math.isnan(g) for g in gaps), "mean_gap": round(finite_mean(gaps), 4)}


def improver_sft_rows(rows: list[dict]) -> list[dict]:
    return [{"prompt": improver_messages(r["prompt"], r["draft"]),
             "completion": [{"role": "assistant", "content": r["target"]}]} for r in rows]


def train_improver(inputs: ImproverTraining, theta0: str, data: Path, out: Path, work: Path, launch: Launch,
                   logs: Path) -> dict:
    """Step 2: R_t, fine-tuned from θ0 (not θ_{t-1}) on improver_data.jsonl."""
    rows = improver_sft_rows(read_jsonl(data))
    if not rows:
        raise UserError(f"{data}: no training rows for the improver (lower improver.gap, or set "
                        "improver.keep_below_gap)")
    write_jsonl(work / "train.jsonl", rows)
    metrics = train("sft", theta0, work / "train.jsonl", inputs.train, inputs.base, inputs.seed, out, work, launch,
                    logs)
    return {"rows": len(rows), "start": theta0, **metrics}


def improver_name(round: int, trained: bool) -> str:
    """Who refined: R_t, or θ0 with the improver template (`improver.trained: false`)."""
    return f"improver_{round}" if trained else "policy_0_as_improver"


def refine(inputs: Refinement, improver: str, responses: Path, out: Path, work: Path) -> dict:
    """Step 4: refined.jsonl, ỹ ~ R_t(x, y_{t-1}) for each response row."""
    t = inputs.round
    rows = read_jsonl(responses)
    requests = [Request(r["id"], improver_messages(r["prompt"], r["response"])) for r in rows]
    sampling = sampling_of(inputs.sampling, inputs.seed)
    completions = generate(improver, requests, sampling, base=inputs.base, engine=inputs.engine,
                           shard_dir=work / "shards", desc=f"round {t}: refine")
    out_rows = [{"id": r["id"], "prompt": r["prompt"], "draft": r["response"], "refined": c.text,
                 "finish_reason": c.finish_reasons[0], "round": t, "stage": "refine",
                 "model": improver_name(t, inputs.trained),
                 "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p}}
                for r, c in zip(rows, completions)]
    write_jsonl(out, out_rows)
    changed = sum(r["refined"] != r["draft"] for r in out_rows)
    return {"rows": len(out_rows), "changed": changed}
