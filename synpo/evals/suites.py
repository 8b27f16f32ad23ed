"""The evaluation suites a recipe can name, and the prompts each holds (for decontamination)."""

from __future__ import annotations

from synpo.recipe import Recipe


def eval_prompts(recipe: Recipe) -> list[str]:
    """Every prompt of the recipe's evaluation suites: synthetic prompts must not overlap them."""
    prompts: list[str] = []
    for suite in recipe.eval.suites:
        if suite == "toy":
            from synpo.evals.toy import load_benchmark

            prompts += [r["prompt"] for r in load_benchmark()]
        else:
            from synpo.evals.datasets import suite_prompts

            prompts += suite_prompts(suite, recipe.eval.data_dir)
    return prompts


def run_suite(suite: str, recipe: Recipe, engine, out_dir, work) -> dict:
    from synpo.evals import judged

    return judged.run(suite, recipe, engine, out_dir, work)
