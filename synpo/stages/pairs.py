"""Step 5: preference pairs, and the growing data set D.

synpo: chosen = the refined answer ỹ, rejected = π_0's answer y_0.
sampling_ranking: among k samples of π_{t-1}, chosen = the best, rejected = the worst.
A pair is kept when score(chosen) - score(rejected) > τ (`pairs.gap`) and neither side is
degenerate (empty, cut off at the token limit, or mostly repeated n-grams). At most
`pairs.per_round` kept pairs, drawn in a seeded order, join D.

D is written in TRL's conversational preference format (prompt / chosen / rejected as
message lists) with per-row provenance, as JSONL and as a `datasets` directory.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from synpo.io import atomic_dir, read_jsonl, write_json, write_jsonl
from synpo.recipe import PairsConfig, ScorerConfig
from synpo.scoring import finite_mean, score_gaps, score_groups


class PairBuilding(BaseModel):
    """Step 5: this round's pairs, scored, filtered and capped."""

    model_config = ConfigDict(frozen=True)
    round: int
    pairs: PairsConfig
    scorer: ScorerConfig
    chosen_model: str
    """Provenance of the chosen side: improver_t, policy_0_as_improver, or policy_{t-1} (sampling_ranking)."""
    seed: int


def repetition(text: str, n: int = 3) -> float:
    """Fraction of the text's word n-grams that repeat an earlier one (0 for short texts)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def degenerate(text: str, finish_reason: str, max_repetition: float, n: int) -> str | None:
    """Why a response is unusable, or None."""
    if finish_reason == "prompt_too_long":  # the engine generated nothing (engines/vllm_worker.py)
        return "prompt_too_long"
    if not text.strip():
        return "empty"
    if finish_reason == "length":
        return "truncated"
    if repetition(text, n) > max_repetition:
        return "repetitive"
    return None


def _candidates(strategy: str, responses: Path, refined: Path | None, scorer):
    """(row, chosen, rejected, chosen_finish, rejected_finish, gap) for each prompt."""
    rows = read_jsonl(responses)
    if strategy == "sampling_ranking":
        # score_groups: a pairwise scorer (PairRM) ranks each prompt's k samples jointly
        groups = score_groups(scorer, [r["prompt"] for r in rows], [r["samples"] for r in rows])
        out = []
        for r, s in zip(rows, groups):
            scored = [i for i in range(len(r["samples"])) if not math.isnan(s[i])]  # NaN: the judge gave no rating
            if len(scored) < 2:
                out.append((r, "", "", "", "", math.nan))
                continue
            best, worst = max(scored, key=s.__getitem__), min(scored, key=s.__getitem__)
            out.append((r, r["samples"][best], r["samples"][worst], r["finish_reasons"][best],
                        r["finish_reasons"][worst], s[best] - s[worst]))
        return out
    refined_rows = {r["id"]: r for r in read_jsonl(refined)}
    rows = [r for r in rows if r["id"] in refined_rows]
    chosen = [refined_rows[r["id"]]["refined"] for r in rows]
    rejected = [r["initial_response"] for r in rows]
    gaps = score_gaps(scorer, [r["prompt"] for r in rows], chosen, rejected)
    return [(r, c, j, refined_rows[r["id"]]["finish_reason"], r["initial_finish"], g)
            for r, c, j, g in zip(rows, chosen, rejected, gaps)]


def build_pairs(inputs: PairBuilding, responses: Path, refined: Path | None, out: Path, scorer) -> dict:
    cfg, t = inputs.pairs, inputs.round
    kept, dropped, gaps = [], Counter(), []
    candidates = _candidates(cfg.strategy, responses, refined, scorer)
    for row, chosen, rejected, chosen_finish, rejected_finish, gap in candidates:
        gaps.append(gap)
        if math.isnan(gap):  # a judge that gave no parseable rating: no evidence either way
            dropped["unscored"] += 1
        elif why := (degenerate(chosen, chosen_finish, cfg.max_repetition, cfg.repetition_ngram)
                     or degenerate(rejected, rejected_finish, cfg.max_repetition, cfg.repetition_ngram)):
            dropped[f"degenerate_{why}"] += 1
        elif chosen.strip() == rejected.strip():  # an improver that left the answer as it was: nothing to prefer
            dropped["identical"] += 1
        elif gap <= cfg.gap:
            dropped["below_gap"] += 1
        else:
            kept.append({
                "id": f"{row['id']}",
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "gap": round(gap, 4),
                "round": t, "strategy": cfg.strategy,
                "chosen_model": inputs.chosen_model,
                "rejected_model": "policy_0" if cfg.strategy == "synpo" else f"policy_{t - 1}",
            })
    random.Random(inputs.seed).shuffle(kept)
    over_budget = max(0, len(kept) - cfg.per_round)
    if over_budget:
        dropped["over_budget"] = over_budget
    kept = sorted(kept[: cfg.per_round], key=lambda r: r["id"])
    write_jsonl(out, kept)
    stats = {"candidates": len(gaps), "kept": len(kept), "dropped": dict(sorted(dropped.items())),
             "mean_gap_all": round(finite_mean(gaps), 4),
             "mean_gap_kept": round(sum(r["gap"] for r in kept) / max(len(kept), 1), 4),
             "chosen_chars": round(sum(len(r["chosen"][0]["content"]) for r in kept) / max(len(kept), 1), 1),
             "rejected_chars": round(sum(len(r["rejected"][0]["content"]) for r in kept) / max(len(kept), 1), 1)}
    write_json(out.with_name("pairs_stats.json"), stats)
    return {"candidates": len(gaps), "kept": len(kept), **{f"dropped_{k}": v for k, v in sorted(dropped.items())}}


def write_dataset(round_pairs: list[Path], out_dir: Path) -> int:
    """D = the union of every round's pairs so far: dataset/pairs.jsonl and dataset/hf/."""
    from datasets import Dataset

    rows = [r for p in round_pairs for r in read_jsonl(p)]
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "pairs.jsonl", rows)
        columns = ["id", "prompt", "chosen", "rejected", "gap", "round", "strategy", "chosen_model",
                   "rejected_model"]
        Dataset.from_list([{c: r[c] for c in columns} for r in rows]).save_to_disk(str(tmp / "hf"))
        write_json(tmp / "info.json", {"rows": len(rows), "rounds": len(round_pairs),
                                       "format": "TRL conversational preference (prompt/chosen/rejected)"})
    return len(rows)
