"""Step 7: evaluate θ_t on the recipe's suites; one metrics file per suite, and the run's
metrics.jsonl rebuilt from them (so a resumed run never appends a row twice)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from synpo.engines import engine_for, sampling_of
from synpo.io import read_json, write_json, write_jsonl
from synpo.recipe import EngineConfig, EvalConfig, ModelConfig, SamplingConfig
from synpo.run import round_name


class Evaluation(BaseModel):
    """One suite on one model."""

    model_config = ConfigDict(frozen=True)
    suite: str
    limit: int | None
    sampling: SamplingConfig
    judged: EvalConfig | None
    """alpaca_eval / arena_hard / mt_bench: the eval section, naming this suite only (None for toy)."""
    model_name: str
    """The evaluated model's name in a judged suite's output files, e.g. `tiny-cpu-round_02`."""
    base: ModelConfig
    engine: EngineConfig
    seed: int


def evaluate_suite(inputs: Evaluation, model: str, out_dir: Path, work: Path) -> dict:
    """Run one suite on `model`; writes out_dir/metrics.json and the per-item outputs."""
    engine = engine_for(inputs.base, inputs.engine, model, seed=inputs.seed)
    try:
        if inputs.suite == "toy":
            from synpo.evals import toy

            rows = toy.load_benchmark(limit=inputs.limit, seed=inputs.seed)
            metrics, outputs = toy.evaluate(engine, rows, sampling_of(inputs.sampling, inputs.seed),
                                            shard_dir=work / inputs.suite)
            write_jsonl(out_dir / "outputs.jsonl", outputs)
        else:
            from synpo.evals import SuiteInputs, run_suite

            suite_inputs = SuiteInputs(eval=inputs.judged, engine=inputs.engine, seed=inputs.seed,
                                       model_name=inputs.model_name)
            metrics = run_suite(inputs.suite, suite_inputs, engine, out_dir, work / inputs.suite)
    finally:
        engine.close()
    write_json(out_dir / "metrics.json", metrics)
    return metrics


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
            path = run_dir / round_name(t) / "eval" / suite / "metrics.json"
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
