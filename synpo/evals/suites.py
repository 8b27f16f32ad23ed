"""The evaluation suites a recipe can name, and the prompts each holds (for decontamination)."""

from __future__ import annotations

from synpo.recipe import Recipe


def eval_prompts(recipe: Recipe) -> list[str]:
    """Every prompt of the recipe's evaluation suites: synthetic prompts must not overlap them."""
    from synpo.decontamination import suites_prompts

    return suites_prompts(recipe.eval.suites, recipe.eval.data_dir)


def run_suite(suite: str, recipe: Recipe, engine, out_dir, work) -> dict:
    from synpo.evals import judged

    return judged.run(suite, recipe, engine, out_dir, work)
