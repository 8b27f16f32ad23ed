"""Drift monitors: figures that show a self-training loop going wrong before the headline metric does.

After every round the loop writes round_XX/drift.json (see `drift`):
  - per evaluation suite: π_t's mean answer length (characters) and its growth over round 0 (θ0),
    its repetition rate (the mean fraction of repeated word 3-grams, as `pairs.max_repetition`
    measures a side), the headline metric and its change from the previous round, and for
    alpaca_eval the LC - WR gap (LC win rate minus raw win rate, in points);
  - of D (every round's pairs so far): the mean chosen and rejected lengths and their ratio.
The recipe's `monitors:` section sets limits (synpo.recipe.MonitorsConfig). `crossed` names every
limit a round crosses; the loop then writes RUN_DIR/monitors_stop.json (the report shows it) and stops
before the next round with a UserError. The figures depend only on finished artifacts, never on the
limits, so a rerun with a raised limit skips every finished stage and goes on.
"""

from __future__ import annotations

from pathlib import Path

from synpo.io import read_json, read_jsonl
from synpo.recipe import MonitorsConfig
from synpo.run import round_name

HEADLINE = {"toy": "exact_match", "alpaca_eval": "lc_win_rate", "arena_hard": "win_rate", "mt_bench": "score",
            "ifeval": "prompt_level_strict_acc"}
STOP_FILE = "monitors_stop.json"


def suite_answers(eval_dir: Path, suite: str) -> list[str] | None:
    """The model's answers that a suite's evaluation wrote (None if it wrote none)."""
    if suite == "toy" and (eval_dir / "outputs.jsonl").exists():
        return [r["output"] for r in read_jsonl(eval_dir / "outputs.jsonl")]
    if suite == "ifeval" and (eval_dir / "outputs.jsonl").exists():
        return [r["response"] for r in read_jsonl(eval_dir / "outputs.jsonl")]
    if suite == "alpaca_eval" and (eval_dir / "model_outputs.json").exists():
        return [r["output"] for r in read_json(eval_dir / "model_outputs.json")]
    if suite == "arena_hard" and (eval_dir / "model_answer.jsonl").exists():
        return [r["messages"][-1]["content"]["answer"] for r in read_jsonl(eval_dir / "model_answer.jsonl")]
    if suite == "mt_bench" and (eval_dir / "model_answer.jsonl").exists():
        return [turn for r in read_jsonl(eval_dir / "model_answer.jsonl") for turn in r["choices"][0]["turns"]]
    return None


def _answer_stats(answers: list[str]) -> dict:
    from synpo.stages.pairs import repetition

    n = max(len(answers), 1)
    return {"mean_chars": round(sum(len(a) for a in answers) / n, 2),
            "repetition": round(sum(repetition(a) for a in answers) / n, 4)}


def _headline(run_dir: Path, t: int, suite: str) -> dict:
    path = run_dir / round_name(t) / "eval" / suite / "metrics.json"
    if not path.exists():
        return {}
    from synpo.stages.evaluate import headline

    return headline(suite, read_json(path))


def drift(run_dir: Path, t: int, suites: list[str]) -> dict:
    """Round t's drift figures (see the module docstring)."""
    out: dict = {"round": t, "suites": {}}
    for suite in suites:
        answers = suite_answers(run_dir / round_name(t) / "eval" / suite, suite)
        if answers is None:
            continue
        entry = _answer_stats(answers)
        base = suite_answers(run_dir / "round_00" / "eval" / suite, suite)
        base_chars = _answer_stats(base)["mean_chars"] if base else None
        entry["length_growth"] = round(entry["mean_chars"] / base_chars, 4) if base_chars else None
        now, key = _headline(run_dir, t, suite), HEADLINE[suite]
        entry["headline"] = {"metric": key, "value": now.get(key)}
        previous = _headline(run_dir, t - 1, suite).get(key) if t > 0 else None
        if now.get(key) is not None and previous is not None:
            entry["headline"]["change"] = round(now[key] - previous, 4)
        if now.get("lc_win_rate") is not None and now.get("win_rate") is not None:
            entry["lc_wr_gap"] = round(now["lc_win_rate"] - now["win_rate"], 2)
        out["suites"][suite] = entry
    pairs = [p for s in range(1, t + 1) if (run_dir / round_name(s) / "pairs.jsonl").exists()
             for p in read_jsonl(run_dir / round_name(s) / "pairs.jsonl")]
    if pairs:
        chosen = sum(len(p["chosen"][-1]["content"]) for p in pairs) / len(pairs)
        rejected = sum(len(p["rejected"][-1]["content"]) for p in pairs) / len(pairs)
        out["D"] = {"pairs": len(pairs), "chosen_chars": round(chosen, 2), "rejected_chars": round(rejected, 2),
                    "chosen_rejected_length": round(chosen / rejected, 4) if rejected else None}
    return out


def crossed(figures: dict, limits: MonitorsConfig) -> list[dict]:
    """Every limit round `figures['round']` crosses: [{monitor, message}], in a fixed order."""
    t, hits = figures["round"], []

    def hit(monitor: str, message: str):
        hits.append({"monitor": monitor, "message": f"monitors.{monitor}: {message} after round {t}"})

    for suite, s in figures["suites"].items():
        if limits.max_length_growth is not None and s["length_growth"] is not None \
                and s["length_growth"] > limits.max_length_growth:
            hit("max_length_growth", f"{suite} mean answer length {s['mean_chars']:.1f} chars is "
                f"{s['length_growth']:.3f}x round 0's (limit {limits.max_length_growth}x)")
        if limits.max_repetition is not None and s["repetition"] > limits.max_repetition:
            hit("max_repetition", f"{suite} answers repeat {s['repetition']:.3f} of their 3-grams "
                f"(limit {limits.max_repetition})")
        change = s["headline"].get("change")
        if limits.max_headline_drop is not None and change is not None and -change > limits.max_headline_drop:
            hit("max_headline_drop", f"{suite} {s['headline']['metric']} fell {-change:.4f} below the previous "
                f"round's, to {s['headline']['value']:.4f} (limit {limits.max_headline_drop})")
        if limits.max_lc_wr_gap is not None and abs(s.get("lc_wr_gap") or 0) > limits.max_lc_wr_gap:
            hit("max_lc_wr_gap", f"{suite} LC - WR gap is {s['lc_wr_gap']:.2f} points (limit {limits.max_lc_wr_gap})")
    ratio = figures.get("D", {}).get("chosen_rejected_length")
    if limits.max_chosen_rejected_length is not None and ratio is not None \
            and ratio > limits.max_chosen_rejected_length:
        hit("max_chosen_rejected_length", f"D's chosen answers are {ratio:.3f}x as long as its rejected ones "
            f"(limit {limits.max_chosen_rejected_length}x)")
    return hits


def scalars(figures: dict) -> dict[str, float]:
    """The figures flattened to tracker tags: drift/<suite>/<name>, drift/D/<name>."""
    out = {}
    for suite, s in figures["suites"].items():
        for name in ("mean_chars", "repetition", "length_growth", "lc_wr_gap"):
            if s.get(name) is not None:
                out[f"drift/{suite}/{name}"] = s[name]
        if s["headline"].get("change") is not None:
            out[f"drift/{suite}/headline_change"] = s["headline"]["change"]
    for name, value in figures.get("D", {}).items():
        if value is not None:
            out[f"drift/D/{name}"] = value
    return out
