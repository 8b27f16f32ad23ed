"""Evaluation: the toy benchmark and the judged suites (AlpacaEval 2, Arena-Hard v0.1, MT-Bench).

The evaluate stage, `synpo eval` and the prompts stage call the three names below; nothing in
this package reads the recipe as a whole.
"""

from synpo.evals.inputs import SuiteInputs
from synpo.evals.suites import eval_prompts, run_suite

__all__ = ["SuiteInputs", "eval_prompts", "run_suite"]
