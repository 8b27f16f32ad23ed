"""The evaluation suites' entry points: run a judged suite, and list the prompts every suite
holds (for decontamination).

`run_suite(suite, inputs, engine, out_dir, work)` has the evaluated model (behind `engine`)
answer a judged suite (alpaca_eval, arena_hard, mt_bench), asks the judge (`eval.judge`) for
verdicts, writes the per-item files to `out_dir` and returns the suite's metrics;
`metrics["headline"]` holds the numbers that go into RUN_DIR/metrics.jsonl and the report.
A suite reads nothing but its `SuiteInputs`: the evaluate stage and `synpo eval` build them.
"""

from __future__ import annotations

from pathlib import Path

from synpo.errors import UserError
from synpo.evals.inputs import SuiteInputs


def run_suite(suite: str, inputs: SuiteInputs, engine, out_dir: Path, work: Path) -> dict:
    """Run one judged suite; returns its metrics (see the module docstring)."""
    from synpo.evals import alpaca_eval, arena_hard, ifeval, mt_bench

    modules = {"alpaca_eval": alpaca_eval, "arena_hard": arena_hard, "mt_bench": mt_bench, "ifeval": ifeval}
    if suite not in modules:
        raise UserError(f"eval.suites: unknown suite {suite}")
    cfg = inputs.eval

    def make_judge():  # made once the answers are in: the official alpaca_eval backend needs none
        from synpo.evals.judge import Judge

        if cfg.judge is None:
            raise UserError(f"eval.judge: required for the {suite} suite (kind: openai, base_url, model, api_key_env)")
        return Judge(cfg.judge, seed=inputs.seed, max_failed=cfg.max_failed_judgments)

    return modules[suite].run(inputs, engine, Path(out_dir), Path(work), make_judge)


def eval_prompts(suites: list[str], data_dir: str | None) -> list[str]:
    """Every prompt of the named suites (alpaca_eval, arena_hard, mt_bench, ifeval, toy; all turns):
    synthetic prompts must not overlap them."""
    from synpo.evals.datasets import LOADERS, suite_prompts

    prompts: list[str] = []
    for suite in suites:
        if suite == "toy":
            from synpo.evals.toy import load_benchmark

            prompts += [r["prompt"] for r in load_benchmark()]
        elif suite in LOADERS:
            prompts += suite_prompts(suite, data_dir)
        else:
            raise UserError(f"--suites: unknown suite {suite!r} (alpaca_eval, arena_hard, mt_bench, ifeval, toy)")
    return prompts
