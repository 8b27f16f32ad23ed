"""Step 7: evaluate θ_t on the recipe's suites; one metrics file per suite, and the run's
metrics.jsonl rebuilt from them (so a resumed run never appends a row twice)."""

from __future__ import annotations

from pathlib import Path

from synpo.engines import make_engine
from synpo.io import read_json, write_json, write_jsonl
from synpo.recipe import Recipe


def evaluate_suite(recipe: Recipe, suite: str, model: str, out_dir: Path, work: Path) -> dict:
    """Run one suite on `model`; writes out_dir/metrics.json and the per-item outputs."""
    engine = make_engine(recipe.engine_for("eval"), model, dtype=recipe.model.dtype,
                         trust_remote_code=recipe.model.trust_remote_code, seed=recipe.seed,
                         chat_template=recipe.model.chat_template)
    try:
        if suite == "toy":
            from synpo.engines.base import Sampling
            from synpo.evals import toy

            rows = toy.load_benchmark(limit=recipe.eval.limit, seed=recipe.seed)
            s = recipe.eval.sampling
            metrics, outputs = toy.evaluate(engine, rows, Sampling(temperature=s.temperature, top_p=s.top_p,
                                                                   max_new_tokens=s.max_new_tokens,
                                                                   seed=recipe.seed), shard_dir=work / suite)
            write_jsonl(out_dir / "outputs.jsonl", outputs)
        else:
            from synpo.evals import SuiteInputs, run_suite

            inputs = SuiteInputs(eval=recipe.eval, engine=recipe.engine_for("eval"), seed=recipe.seed,
                                 model_name=model_name(recipe.name, Path(out_dir)))
            metrics = run_suite(suite, inputs, engine, out_dir, work / suite)
    finally:
        engine.close()
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def model_name(recipe_name: str, out_dir: Path) -> str:
    """The evaluated model's name in output files: `<recipe name>-round_XX` inside a run."""
    import re

    round_dir = out_dir.parent.parent.name if out_dir.parent.name == "eval" else ""
    return f"{recipe_name}-{round_dir}" if re.fullmatch(r"round_\d+", round_dir) else recipe_name


def headline(suite: str, metrics: dict) -> dict:
    """The numbers a metrics.jsonl row carries for a suite."""
    if suite == "toy":
        o = metrics["overall"]
        return {"exact_match": o["exact_match"], "score": o["score"], "win_rate": o["win_rate"]}
    return metrics.get("headline", metrics)


def rebuild_metrics(run_dir: Path, rounds: int, suites: list[str]) -> list[dict]:
    """RUN_DIR/metrics.jsonl: one row per (round, suite) that has been evaluated."""
    rows = []
    for t in range(rounds + 1):
        for suite in suites:
            path = run_dir / f"round_{t:02d}" / "eval" / suite / "metrics.json"
            if path.exists():
                rows.append({"round": t, "suite": suite, "metrics": headline(suite, read_json(path))})
    write_jsonl(run_dir / "metrics.jsonl", rows)
    return rows


def metrics_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="metrics by round")
    keys = []
    for r in rows:
        keys += [(r["suite"], k) for k in r["metrics"] if (r["suite"], k) not in keys and
                 isinstance(r["metrics"][k], int | float)]
    table.add_column("round", justify="right")
    for suite, k in keys:
        table.add_column(f"{suite}\n{k}", justify="right")
    by_round: dict[int, dict] = {}
    for r in rows:
        by_round.setdefault(r["round"], {}).update({(r["suite"], k): v for k, v in r["metrics"].items()})
    for t, values in sorted(by_round.items()):
        table.add_row(str(t), *[("-" if key not in values else f"{values[key]:.3f}" if isinstance(values[key], float)
                                 else str(values[key])) for key in keys])
    return table
