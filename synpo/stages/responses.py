"""Step 3: answers on this round's synthetic prompts.

synpo: y_{t-1} ~ π_{t-1}(x) and y_0 ~ π_0(x). In round 1 π_{t-1} is π_0, so one set of
answers serves as both (π_0 answers each prompt once).
sampling_ranking (the paper's baseline): k samples of π_{t-1} per prompt instead.
"""

from __future__ import annotations

from pathlib import Path

from synpo.engines import Request, generate_sharded, make_engine
from synpo.io import read_jsonl, write_jsonl
from synpo.recipe import Recipe
from synpo.stages.improver import sampling_of


def _sample(recipe: Recipe, model: str, rows: list[dict], n: int, seed: int, shard_dir: Path, desc: str):
    cfg = recipe.engine_for("responses")
    engine = make_engine(cfg, model, dtype=recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code,
                         seed=recipe.seed, chat_template=recipe.model.chat_template)
    requests = [Request(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in rows]
    try:
        return generate_sharded(engine, requests, sampling_of(recipe.responses.sampling, seed, n=n), shard_dir,
                                shard_size=cfg.shard_size, desc=desc)
    finally:
        engine.close()


def generate_responses(recipe: Recipe, t: int, policy: str, initial: str, prompts: Path, out: Path,
                       work: Path) -> dict:
    rows = read_jsonl(prompts)
    sampling = recipe.responses.sampling.model_dump()
    if recipe.pairs.strategy == "sampling_ranking":
        k = recipe.pairs.k
        samples = _sample(recipe, policy, rows, k, recipe.seed * 1000 + 100 + t, work / "policy",
                          f"round {t}: π_{t - 1} x{k}")
        out_rows = [{"id": r["id"], "prompt": r["prompt"], "samples": c.texts, "finish_reasons": c.finish_reasons,
                     "round": t, "stage": "responses", "model": f"policy_{t - 1}", "sampling": sampling}
                    for r, c in zip(rows, samples)]
    else:
        # π_0's answers do not depend on the round's policy: seed them by prompt set only.
        initial_answers = _sample(recipe, initial, rows, 1, recipe.seed * 1000 + 200 + t, work / "initial",
                                  f"round {t}: π_0")
        if t == 1:
            policy_answers = initial_answers
        else:
            policy_answers = _sample(recipe, policy, rows, 1, recipe.seed * 1000 + 300 + t, work / "policy",
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
