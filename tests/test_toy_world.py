import random

import pytest

from synpo.toy.splits import build_splits
from synpo.toy.world import FAMILIES, exact_match, is_valid_prompt, parse_task, sample_task, score


@pytest.fixture(scope="module")
def splits():
    return build_splits()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_round_trips_and_gold_scores_one(family):
    rng = random.Random(family)
    for _ in range(50):
        task = sample_task(rng, family)
        parsed = parse_task(task.prompt)
        assert parsed is not None and parsed.family == family
        assert parsed.gold == task.gold
        assert score(task.prompt, task.gold) == 1.0


def test_checker_right_wrong_partial_malformed():
    p = "Sort these numbers in ascending order: 34, 7, 81, 15"
    assert score(p, "7, 15, 34, 81") == 1.0
    assert score(p, " 7, 15, 34, 81. ") == 1.0  # whitespace and a final period are not errors
    swapped = score(p, "7, 15, 81, 34")  # right items, one pair out of order
    reversed_ = score(p, "81, 34, 15, 7")  # right items, wrong direction
    missing = score(p, "7, 15, 34")  # one item short
    assert 0 < reversed_ < swapped < 1
    assert 0 < missing < 1
    assert score(p, "7 15 34 81") < 1  # right order, wrong format: not exact
    assert score(p, "") == 0.0
    assert score(p, "banana") == 0.0
    assert not exact_match(p, "7, 15, 81, 34")


def test_checker_numbers_partial_credit_by_distance():
    p = "What is 7 plus 5?"
    assert score(p, "12") == 1.0
    assert score(p, "13") > score(p, "9") > score(p, "40") >= 0
    assert score(p, "12 12") < score(p, "13")  # extra words cost more than a near miss
    assert score(p, "twelve") == 0.0


def test_checker_case_and_filter():
    assert score("Convert these words to uppercase: apple dog", "APPLE DOG") == 1.0
    assert score("Convert these words to uppercase: apple dog", "apple dog") < 0.5
    p = "List only the fruits from: apple, dog, pear, red"
    assert score(p, "apple, pear") == 1.0
    assert 0 < score(p, "apple") < 1
    assert score(p, "dog, red") < score(p, "apple")


@pytest.mark.parametrize("prompt", [
    "Sort these numbers sideways: 1, 2, 3",
    "Reverse the order of these words: apple spaceship tiger",  # unknown item
    "What is 3 minus 9?",  # negative results are not tasks
    "Tell me a joke.",
    "",
    "How many fruits are in this list: apple?",  # too short a list
])
def test_invalid_prompts(prompt):
    assert not is_valid_prompt(prompt)
    if prompt:
        with pytest.raises(ValueError):
            score(prompt, "anything")


def test_splits_are_deterministic_and_disjoint(splits):
    again = build_splits()
    assert again == splits
    other = build_splits(seed=99)
    assert other["benchmark"] != splits["benchmark"]
    prompts = {name: {r["prompt"] for r in rows} for name, rows in splits.items() if name != "corpus"}
    assert not prompts["benchmark"] & prompts["seed"]
    assert not prompts["benchmark"] & prompts["sft"]
    assert not prompts["seed"] & prompts["sft"]


def test_weak_teacher_chatters_on_some_phrasings_only(splits):
    """θ0's SFT answers are right in content but wrapped in chatter for some phrasings;
    the seed set's answers are always the gold ones."""
    tasks = [r for r in splits["sft"] if r["family"] != "write_instruction"]
    sloppy = [r for r in tasks if r["response"] != parse_task(r["prompt"]).gold]
    assert 0.2 < len(sloppy) / len(tasks) < 0.5
    for r in sloppy:
        task = parse_task(r["prompt"])
        assert task.template in FAMILIES[task.family].sloppy_templates
        assert task.gold in r["response"] and 0 < score(r["prompt"], r["response"]) < 1
    assert all(r["response"] == parse_task(r["prompt"]).gold for r in splits["seed"])
    assert {parse_task(r["prompt"]).family for r in sloppy} == set(FAMILIES)


def test_sft_teaches_writing_instructions(splits):
    writing = [r for r in splits["sft"] if r["family"] == "write_instruction"]
    assert 0.05 < len(writing) / len(splits["sft"]) < 0.15
    assert all(is_valid_prompt(r["response"]) and not is_valid_prompt(r["prompt"]) for r in writing)


def test_benchmark_is_balanced(splits):
    from collections import Counter

    counts = Counter(r["family"] for r in splits["benchmark"])
    assert set(counts) == set(FAMILIES)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_shipped_data_matches_the_generator(splits):
    from synpo.io import read_jsonl
    from synpo.toy import DATA

    for name in ("sft", "seed", "benchmark", "corpus"):
        assert read_jsonl(DATA / f"{name}.jsonl") == splits[name], name
