"""Decontamination: near-duplicates (case, punctuation, a word changed) and copied passages are
caught, clean prompts pass; `synpo decontaminate` keeps every field of the rows that pass."""

import json
import random
import re

import pytest

from synpo.cli import main
from synpo.decontamination import Decontaminator, words
from synpo.evals.datasets import suite_prompts
from synpo.io import read_jsonl

EVAL = [
    "What is some cool music from the 1920s?",
    "How do I detail a car?",
    "Who created the Superman cartoon character?",
    "You are given a sentence in first-order logic. Translate it into natural language.",
    "Write a Python function that returns the n-th Fibonacci number using memoization, and explain its "
    "time complexity compared with the naive recursive version in two short paragraphs.",
]


@pytest.fixture(scope="module")
def check():
    decontaminator = Decontaminator(EVAL)
    return lambda prompt: decontaminator([prompt])[0]


def test_normalisation_ignores_case_punctuation_and_joined_words():
    assert "".join(words("First-Order logic, DON'T")) == "".join(words("first order Logic dont"))


@pytest.mark.parametrize("prompt", [
    "what is some cool address from the 1920s",             # case, punctuation, one word (short)
    "HOW DO I CLEAN A CAR??",                                 # 6 words, one changed
    "Who Created The Superman Cartoon Villain",
    "you are given a sentence in firstorder logic translate it into plain language",  # joined words
    "Write a Python function that returns the n-th Fibonacci number using caching, and explain its "
    "time complexity compared with the naive recursive version in two short paragraphs.",
])
def test_lightly_perturbed_evaluation_prompts_are_near_duplicates(check, prompt):
    assert check(prompt) == "near_duplicate"


def test_a_copied_passage_inside_a_longer_prompt(check):
    passage = EVAL[4]
    prompt = "Homework help needed. " + passage + " Then also write unit tests for it with pytest, please."
    assert check(prompt) in ("near_duplicate", "copied_passage")
    # with near-duplicates off (similarity 1: exact copies only), the 13-gram rule alone finds the passage
    passages_only = Decontaminator(EVAL, similarity=1.0)
    assert passages_only([prompt]) == ["copied_passage"]
    assert passages_only(["Homework help needed. " + " ".join(passage.split()[:12])]) == [None]  # too little


@pytest.mark.parametrize("prompt", [
    "What is some cool art from the 1600s in northern Italy and who painted it?",
    "How do I change the oil of a motorbike?",
    "Who wrote the first Batman comic book?",
    "Translate this sentence into French: the cat sleeps on the mat.",
    "Write a poem about the sea.",
])
def test_clean_prompts_pass(check, prompt):
    assert check(prompt) is None


def test_shipped_evaluation_sets_perturbed_and_clean():
    """Arena-Hard (shipped with synpo): >= 90 % of perturbed copies caught; MT-Bench's questions are clean
    against it except where they share a prompt."""
    arena = suite_prompts("arena_hard", None)
    rng = random.Random(0)
    vocabulary = sorted({w for p in suite_prompts("mt_bench", None) for w in re.findall(r"[A-Za-z]{3,}", p)})

    def perturb(p):
        tokens = p.split(" ")
        i = rng.randrange(len(tokens))
        tokens[i] = rng.choice(vocabulary)
        return re.sub(r"[^\w\s]", "", " ".join(tokens)).upper()

    decontaminator = Decontaminator(arena)
    caught = [r is not None for r in decontaminator([perturb(p) for p in arena])]
    assert sum(caught) / len(arena) >= 0.9
    clean = suite_prompts("mt_bench", None)
    assert sum(r is not None for r in decontaminator(clean)) / len(clean) < 0.01


def test_synpo_decontaminate_writes_the_rows_that_pass(tmp_path, capsys):
    data = tmp_path / "evals" / "alpaca_eval" / "gpt4_1106_preview_model_outputs.json"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps([{"instruction": p, "output": "x", "generator": "gpt4_1106_preview", "dataset": "t"}
                                for p in EVAL]))
    rows = [{"id": 1, "prompt": "HOW DO I CLEAN A CAR", "chosen": "a", "meta": {"k": [1, 2]}},
            {"id": 2, "prompt": "How do I bake sourdough bread at home?", "chosen": "b", "meta": None},
            {"id": 3, "prompt": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "who created the superman cartoon villain"}]},
            {"id": 4, "prompt": [{"role": "user", "content": "Name three rivers in Africa."}], "score": 0.5}]
    source = tmp_path / "prefs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "clean.jsonl"
    assert main(["decontaminate", str(source), "--out", str(out), "--suites", "alpaca_eval,arena_hard",
                 "--data-dir", str(tmp_path / "evals")]) == 0
    assert read_jsonl(out) == [rows[1], rows[3]]  # every field kept, order kept
    printed = capsys.readouterr().out
    assert "kept 2, dropped 2 (near_duplicate 2) of 4 rows" in printed and "against 505 prompts" in printed


def test_synpo_decontaminate_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"question": "hi"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["decontaminate", str(source), "--out", str(out), "--suites", "arena_hard"]) == 2
    assert "record 1 has no text field 'prompt'" in capsys.readouterr().err and not out.exists()
    assert main(["decontaminate", str(source), "--out", str(out), "--suites", "arena_hard,nope",
                 "--field", "question"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err and not out.exists()
    assert main(["decontaminate", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2


def test_synpo_decontaminate_runs_with_its_defaults_and_names_its_own_option(tmp_path, capsys):
    arena = suite_prompts("arena_hard", None)[0]
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"prompt": arena}) + "\n" + json.dumps({"prompt": "Name three rivers."}) + "\n")
    out = tmp_path / "clean.jsonl"
    assert main(["decontaminate", str(source), "--out", str(out)]) == 0  # no AlpacaEval set: the shipped suites
    printed = capsys.readouterr().out
    assert "kept 1, dropped 1" in printed and "arena_hard, mt_bench" in printed
    assert main(["decontaminate", str(source), "--out", str(tmp_path / "x.jsonl"), "--suites", "alpaca_eval"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --data-dir: ") and "give --data-dir DATA_DIR" in err[0]
    assert "eval.data_dir" not in err[0]
