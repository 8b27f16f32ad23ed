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

from synpo.engines import Request, Sampling, generate_sharded, make_engine
from synpo.io import read_jsonl, write_jsonl
from synpo.recipe import Recipe, SamplingConfig
from synpo.scoring import finite_mean, score_gaps
from synpo.templates import render


def sampling_of(cfg: SamplingConfig, seed: int, n: int = 1) -> Sampling:
    return Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, n=n, seed=seed)


def improver_messages(prompt: str, draft: str) -> list[dict]:
    return [{"role": "user", "content": render("improver", prompt=prompt, response=draft)}]


def improver_data(recipe: Recipe, t: int, policy: str, seed_rows: list[dict], out: Path, work: Path, scorer) -> dict:
    """Step 1: improver_data.jsonl of (prompt, draft y_{t-1}, target y*) rows over the gap."""
    engine_cfg = recipe.engine_for("improver")
    engine = make_engine(engine_cfg, policy, dtype=recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code,
                         seed=recipe.seed, chat_template=recipe.model.chat_template)
    requests = [Request(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in seed_rows]
    try:
        completions = generate_sharded(engine, requests, sampling_of(recipe.improver.seed_sampling, recipe.seed + t),
                                       work / "shards", shard_size=engine_cfg.shard_size,
                                       desc=f"round {t}: π_{t - 1} on seed")
    finally:
        engine.close()
    prompts = [r["prompt"] for r in seed_rows]
    drafts = [c.text for c in completions]
    gaps = score_gaps(scorer, prompts, [r["response"] for r in seed_rows], drafts)
    cfg = recipe.improver
    rng = random.Random(f"{recipe.seed}:improver_data:{t}")
    rows = [{"id": r["id"], "prompt": r["prompt"], "draft": d, "target": r["response"], "gap": round(g, 4),
             "round": t, "stage": "improver_data", "model": f"policy_{t - 1}"}
            for r, d, g in zip(seed_rows, drafts, gaps)
            if not math.isnan(g) and (g > cfg.gap or (cfg.keep_below_gap and rng.random() < cfg.keep_below_gap))]
    write_jsonl(out, rows)
    return {"seed": len(seed_rows), "over_gap": sum(g > cfg.gap for g in gaps), "kept": len(rows),
            "unscored": sum(math.isnan(g) for g in gaps), "mean_gap": round(finite_mean(gaps), 4)}


def improver_sft_rows(rows: list[dict]) -> list[dict]:
    return [{"prompt": improver_messages(r["prompt"], r["draft"]),
             "completion": [{"role": "assistant", "content": r["target"]}]} for r in rows]


def improver_name(recipe: Recipe, t: int) -> str:
    """Who refined: R_t, or θ0 with the improver template (`improver.trained: false`)."""
    return f"improver_{t}" if recipe.improver.trained else "policy_0_as_improver"


def refine(recipe: Recipe, t: int, improver: Path, responses: Path, out: Path, work: Path) -> dict:
    """Step 4: refined.jsonl, ỹ ~ R_t(x, y_{t-1}) for each response row."""
    rows = read_jsonl(responses)
    engine_cfg = recipe.engine_for("improver")
    engine = make_engine(engine_cfg, improver, dtype=recipe.model.dtype,
                         trust_remote_code=recipe.model.trust_remote_code, seed=recipe.seed,
                         chat_template=recipe.model.chat_template)
    requests = [Request(r["id"], improver_messages(r["prompt"], r["response"])) for r in rows]
    sampling = sampling_of(recipe.improver.sampling, recipe.seed * 1000 + t)
    try:
        completions = generate_sharded(engine, requests, sampling, work / "shards",
                                       shard_size=engine_cfg.shard_size, desc=f"round {t}: refine")
    finally:
        engine.close()
    out_rows = [{"id": r["id"], "prompt": r["prompt"], "draft": r["response"], "refined": c.text,
                 "finish_reason": c.finish_reasons[0], "round": t, "stage": "refine", "model": improver_name(recipe, t),
                 "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p}}
                for r, c in zip(rows, completions)]
    write_jsonl(out, out_rows)
    changed = sum(r["refined"] != r["draft"] for r in out_rows)
    return {"rows": len(out_rows), "changed": changed}
