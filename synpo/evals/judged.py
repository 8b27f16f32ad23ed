"""The judged suites (alpaca_eval, arena_hard, mt_bench): one entry point for the evaluate stage.

`run(suite, recipe, engine, out_dir, work)` has the evaluated model (behind `engine`) answer
the suite, asks the recipe's judge (`eval.judge`) for verdicts, writes the per-item files to
`out_dir` and returns the suite's metrics; `metrics["headline"]` holds the numbers that go
into RUN_DIR/metrics.jsonl and the report.
"""

from __future__ import annotations

import re
from pathlib import Path

from synpo.errors import UserError
from synpo.recipe import Recipe


def run(suite: str, recipe: Recipe, engine, out_dir: Path, work: Path) -> dict:
    from synpo.evals import alpaca_eval, arena_hard, mt_bench

    modules = {"alpaca_eval": alpaca_eval, "arena_hard": arena_hard, "mt_bench": mt_bench}
    if suite not in modules:
        raise UserError(f"eval.suites: unknown suite {suite}")
    out_dir, work = Path(out_dir), Path(work)
    generator = model_name(recipe, out_dir)

    def make_judge():
        from synpo.evals.judge import Judge

        if recipe.eval.judge is None:
            raise UserError(f"eval.judge: required for the {suite} suite (kind: openai, base_url, model, api_key_env)")
        return Judge(recipe.eval.judge, seed=recipe.seed, max_failed=recipe.eval.max_failed_judgments)

    return modules[suite].run(recipe, engine, out_dir, work, generator, make_judge)


def model_name(recipe: Recipe, out_dir: Path) -> str:
    """The evaluated model's name in output files: `<recipe name>-round_XX` inside a run."""
    round_dir = out_dir.parent.parent.name if out_dir.parent.name == "eval" else ""
    return f"{recipe.name}-{round_dir}" if re.fullmatch(r"round_\d+", round_dir) else recipe.name
