"""Stage pieces on small inputs: keywords, question parsing, filters, pairs, sharded generation."""

import random

import pytest

from synpo.data.keywords import content_keywords, corpus_keywords, seed_keywords
from synpo.decontamination import Decontaminator
from synpo.engines.base import Completion, Request, Sampling, generate_sharded
from synpo.io import read_jsonl
from synpo.stages.pairs import degenerate, repetition
from synpo.stages.prompt_generator import filter_prompts, generator_training_rows, normalise


def test_content_keywords_drop_stopwords_numbers_and_names():
    text = "Alice wanted to sort the 12 mangos. Later she asked Bob for the largest pear in the garden."
    words = content_keywords(text)
    assert words == ["sort", "mangos", "later", "asked", "largest", "pear", "garden"]  # "wanted" is a stopword
    # a capitalised word mid-sentence is a name even when not in the name list
    assert "zorblat" not in content_keywords("We met Zorblat near the river. Zorblat likes to count.")


def test_seed_keywords_take_k_own_and_noise_from_the_other_prompt():
    rng = random.Random(0)
    prompt = "Sort these numbers in ascending order: 3, 1, 2"
    other = ["Convert these words to uppercase: tiger lemon"]
    for _ in range(20):
        kws = seed_keywords(prompt, other, rng, k=2, noise=1)
        own = [w for w in kws if w in content_keywords(prompt)]
        noise = [w for w in kws if w not in content_keywords(prompt)]
        assert len(own) == 2 and len(noise) == 1
        assert noise[0] in content_keywords(other[0])
    orders = {tuple(seed_keywords(prompt, other, rng)) for _ in range(30)}
    assert len(orders) > 5  # shuffled, not always the same triple in the same order
    assert seed_keywords("Is it?", other, rng) is None


def test_a_prompt_with_one_keyword_gets_more_noise_so_the_generator_always_sees_three():
    rng = random.Random(0)
    others = ["Convert these words to uppercase: tiger lemon", "Sort the numbers descending: 3, 1"]
    for _ in range(20):
        kws = seed_keywords("What is 3 plus 4?", others, rng, k=2, noise=1)
        assert len(kws) == 3 and "plus" in kws
        noise = [w for w in kws if w != "plus"]
        # one noise keyword from each other prompt, so the noise is never a coherent pair
        assert sum(w in content_keywords(others[0]) for w in noise) == 1
        assert sum(w in content_keywords(others[1]) for w in noise) == 1


def test_corpus_keywords_come_from_one_paragraph():
    rng = random.Random(1)
    paragraph = "The farmer likes to count the plums. Emma wrote the word tiger in capital letters."
    kws = corpus_keywords(paragraph, rng, k=3)
    assert len(kws) == 3 and set(kws) <= set(content_keywords(paragraph)) and "emma" not in kws
    assert corpus_keywords("It is.", rng) is None


def test_generator_rows_target_question_and_solution():
    seed = [{"id": str(i), "prompt": p, "response": r} for i, (p, r) in enumerate([
        ("Sort these numbers in ascending order: 3, 1, 2", "1, 2, 3"),
        ("Convert these words to uppercase: tiger lemon", "TIGER LEMON"),
        ("Reverse the order of these words: saw red dog", "dog red saw"),
    ])]
    rows = generator_training_rows(seed, k=2, noise=1, rng=random.Random(0))
    assert len(rows) == 3
    for row, s in zip(rows, seed):
        user = row["prompt"][0]["content"]
        assert all(k in user for k in row["keywords"])
        target = row["completion"][0]["content"]
        assert target == f"<question>{s['prompt']}</question>\n<solution>{s['response']}</solution>"


def completion(text, reason="stop"):
    return Completion("x", [text], [reason], [len(text.split())])


def test_filter_prompts_reasons():
    seen = {"Reverse the order of these words: saw red dog", normalise("What is 2 plus 2?")}
    outputs = [
        completion("<question>Sort these numbers in ascending order: 3, 1, 2"),  # kept
        completion("<question>Sort these numbers in ascending order: 3, 1, 2"),  # duplicate (this round)
        completion("<question>what is 2 plus 2"),  # normalised duplicate of an earlier prompt
        completion("Sort these numbers: 1, 2"),  # no <question> tag
        completion("<question>Sort these numbers in ascending order: 3, 1", "length"),  # cut off
        completion("<question>   "),  # empty
        completion("<question>" + "Tell me a long story " * 20),  # too long
        completion("<question>Tell me a joke."),  # not a task the toy checker knows
        completion("<question>Convert these words to uppercase: tiger lemon"),  # an eval prompt
    ]
    from synpo.toy.world import is_valid_prompt

    kept, dropped = filter_prompts(
        outputs, [["k"]] * len(outputs), max_chars=120, seen=seen,
        valid=lambda ps: [is_valid_prompt(p) or p.startswith("what is") for p in ps],
        contaminated=Decontaminator(["Convert these words to uppercase: tiger lemon"]))
    assert [q for q, _ in kept] == ["Sort these numbers in ascending order: 3, 1, 2"]
    assert dropped == {"duplicate": 2, "unparseable": 2, "empty": 1, "too_long": 1, "invalid": 1,
                       "contaminated": 1}


def test_contamination_by_ngram_overlap():
    eval_prompt = "Write a detailed essay about the history of the printing press in early modern Europe please"
    decontaminator = Decontaminator([eval_prompt], ngram=5, ngram_threshold=0.5)
    check = lambda prompt: decontaminator([prompt])[0] is not None
    assert check(eval_prompt)
    assert check("Write a detailed essay about the history of the printing press in early modern Asia")
    assert not check("Write a short poem about the sea and the wind over the quiet harbour tonight")
    assert not check("Write a detailed essay")  # shorter than n and not an eval prompt


def test_repetition_and_degenerate():
    assert repetition("a b c d e f") == 0.0
    assert repetition("go go go go go go go go") > 0.8
    assert degenerate("", "stop", 0.5, 3) == "empty"
    assert degenerate("1, 2, 3", "length", 0.5, 3) == "truncated"
    assert degenerate("the cat the cat the cat the cat the cat", "stop", 0.5, 3) == "repetitive"
    assert degenerate("1, 2, 3", "stop", 0.5, 3) is None


def _pair_building(recipe):
    """Round 1's pairs stage of the recipe, as the loop builds it."""
    from synpo.iterate import run_stages

    return next(s.inputs for s in run_stages(recipe) if s.key == "round_01/pairs")


def test_build_pairs_keeps_improvements_over_the_gap(tmp_path):
    from synpo.io import write_jsonl
    from synpo.recipe import Recipe
    from synpo.scoring import ToyScorer
    from synpo.stages.pairs import build_pairs

    p = "Sort these numbers in ascending order: 3, 1, 2"
    responses = [
        {"id": "a", "prompt": p, "response": "The answer is 1, 2, 3", "initial_response": "The answer is 1, 2, 3",
         "initial_finish": "stop"},
        {"id": "b", "prompt": p, "response": "1, 2, 3", "initial_response": "1, 2, 3", "initial_finish": "stop"},
        {"id": "c", "prompt": p, "response": "3, 2, 1", "initial_response": "3, 2, 1", "initial_finish": "length"},
        {"id": "d", "prompt": p, "response": "1, 3, 2", "initial_response": "1, 3, 2", "initial_finish": "stop"},
    ]
    refined = [
        {"id": "a", "refined": "1, 2, 3", "finish_reason": "stop"},  # better: kept
        {"id": "b", "refined": "1, 2, 3", "finish_reason": "stop"},  # left as it was: identical sides
        {"id": "c", "refined": "1, 2, 3", "finish_reason": "stop"},  # rejected side truncated
        {"id": "d", "refined": "1, 2, 3", "finish_reason": "stop"},  # better: kept
    ]
    write_jsonl(tmp_path / "responses.jsonl", responses)
    write_jsonl(tmp_path / "refined.jsonl", refined)
    recipe = Recipe.model_validate({"pairs": {"gap": 0.05, "per_round": 1}})
    summary = build_pairs(_pair_building(recipe), tmp_path / "responses.jsonl", tmp_path / "refined.jsonl",
                          tmp_path / "pairs.jsonl", ToyScorer())
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert summary["candidates"] == 4 and summary["kept"] == 1
    assert summary["dropped_identical"] == 1 and summary["dropped_degenerate_truncated"] == 1
    assert summary["dropped_over_budget"] == 1
    (pair,) = pairs
    assert pair["id"] in {"a", "d"}
    assert pair["prompt"] == [{"role": "user", "content": p}]
    assert pair["chosen"] == [{"role": "assistant", "content": "1, 2, 3"}]
    assert pair["gap"] > 0.05 and pair["round"] == 1 and pair["chosen_model"] == "improver_1"


def test_build_pairs_drops_a_pair_whose_sides_are_the_same_text(tmp_path):
    """SmolLM2's improver sometimes returns the draft unchanged; with a gap threshold at or below 0 (a scorer
    whose units are not known yet) such a pair would be kept and train on chosen == rejected."""
    from synpo.io import write_jsonl
    from synpo.recipe import Recipe
    from synpo.scoring import ToyScorer
    from synpo.stages.pairs import build_pairs

    p = "Sort these numbers in ascending order: 3, 1, 2"
    write_jsonl(tmp_path / "responses.jsonl", [
        {"id": i, "prompt": p, "response": r, "initial_response": r, "initial_finish": "stop"}
        for i, r in (("same", "1, 2, 3"), ("other", "3, 1, 2"))])
    write_jsonl(tmp_path / "refined.jsonl", [{"id": "same", "refined": "1, 2, 3 ", "finish_reason": "stop"},
                                             {"id": "other", "refined": "1, 2, 3", "finish_reason": "stop"}])
    recipe = Recipe.model_validate({"pairs": {"gap": -1.0}})
    summary = build_pairs(_pair_building(recipe), tmp_path / "responses.jsonl", tmp_path / "refined.jsonl",
                          tmp_path / "pairs.jsonl", ToyScorer())
    assert summary["kept"] == 1 and summary["dropped_identical"] == 1
    assert [r["id"] for r in read_jsonl(tmp_path / "pairs.jsonl")] == ["other"]


class CountingEngine:
    name = "counting"

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def generate(self, requests, sampling):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        rng = random.Random(sampling.seed)
        return [Completion(r.id, [f"{r.id}-{rng.random():.6f}"], ["stop"], [1]) for r in requests]

    def close(self):
        pass


def test_generate_sharded_resumes_only_missing_shards(tmp_path):
    requests = [Request(f"q{i}", [{"role": "user", "content": str(i)}]) for i in range(10)]
    sampling = Sampling(temperature=1.0, seed=7)
    full = generate_sharded(CountingEngine(), requests, sampling, tmp_path / "full", shard_size=3)

    dying = CountingEngine(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_sharded(dying, requests, sampling, tmp_path / "resumed", shard_size=3)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    again = CountingEngine()
    resumed = generate_sharded(again, requests, sampling, tmp_path / "resumed", shard_size=3)
    assert again.calls == 2  # shards 2 and 3 only
    assert resumed == full  # same texts as an uninterrupted run


def test_generate_sharded_ignores_a_shard_of_other_requests(tmp_path):
    requests = [Request(f"q{i}", []) for i in range(4)]
    generate_sharded(CountingEngine(), requests, Sampling(), tmp_path, shard_size=2)
    engine = CountingEngine()
    other = [Request(f"z{i}", []) for i in range(4)]
    out = generate_sharded(engine, other, Sampling(), tmp_path, shard_size=2)
    assert engine.calls == 2 and [c.id for c in out] == ["z0", "z1", "z2", "z3"]


class RatingsScorer:
    """Scores from a table; None stands for a judge reply with no parseable rating (NaN)."""

    def __init__(self, table):
        self.table = table

    def score(self, prompts, responses):
        return [float("nan") if self.table[r] is None else self.table[r] for r in responses]


def test_unrated_rows_are_dropped_as_unscored_and_means_ignore_them(tmp_path):
    from synpo.io import read_json, write_jsonl
    from synpo.recipe import Recipe
    from synpo.stages.pairs import build_pairs

    p = "Say something nice."
    responses = [{"id": i, "prompt": p, "initial_response": f"draft {i}", "initial_finish": "stop"} for i in "ab"]
    refined = [{"id": i, "refined": f"better {i}", "finish_reason": "stop"} for i in "ab"]
    write_jsonl(tmp_path / "responses.jsonl", responses)
    write_jsonl(tmp_path / "refined.jsonl", refined)
    scorer = RatingsScorer({"draft a": 2.0, "better a": 8.0, "draft b": 2.0, "better b": None})
    recipe = Recipe.model_validate({"pairs": {"gap": 0.5}})
    summary = build_pairs(_pair_building(recipe), tmp_path / "responses.jsonl", tmp_path / "refined.jsonl",
                          tmp_path / "pairs.jsonl", scorer)
    assert summary["kept"] == 1 and summary["dropped_unscored"] == 1  # a NaN gap is never kept
    assert [r["id"] for r in read_jsonl(tmp_path / "pairs.jsonl")] == ["a"]
    assert read_json(tmp_path / "pairs_stats.json")["mean_gap_all"] == 6.0


def test_improver_data_leaves_out_drafts_cut_at_max_new_tokens(monkeypatch, tmp_path):
    """A draft that ran out of max_new_tokens is no answer to improve: counted, never a training row."""
    from synpo.recipe import EngineConfig, ModelConfig, SamplingConfig, ScorerConfig
    from synpo.scoring import ToyScorer
    from synpo.stages import improver

    seed = [{"id": f"s{i}", "prompt": "Sort these numbers in ascending order: 3, 1, 2", "response": "1, 2, 3"}
            for i in range(4)]
    finish = ["stop", "length", "stop", "length"]

    def fake_generate(policy, requests, sampling, **kw):
        return [Completion(r.id, ["3, 2"], [f], [5]) for r, f in zip(requests, finish)]

    monkeypatch.setattr(improver, "generate", fake_generate)
    inputs = improver.ImproverData(round=1, gap=-1e9, keep_below_gap=0.0, seed_sampling=SamplingConfig(),
                                   scorer=ScorerConfig(kind="toy"), base=ModelConfig(path="m"),
                                   engine=EngineConfig(kind="hf"), seed=0)
    summary = improver.improver_data(inputs, "m", seed, tmp_path / "data.jsonl", tmp_path, ToyScorer())
    assert [r["id"] for r in read_jsonl(tmp_path / "data.jsonl")] == ["s0", "s2"]
    assert summary["dropped_unfinished_drafts"] == 2 and summary["kept"] == 2


def test_sft_rows_whose_answer_max_length_would_cut_are_dropped_and_counted(tmp_path):
    """TRL would keep such a row with its answer's end (the end of turn) cut off: R_t would learn not to stop."""
    from synpo.models import load_tokenizer
    from synpo.toy import TINY_MODEL
    from synpo.training.trainers import build_trainer
    from tests.training_utils import training_job

    tokenizer = load_tokenizer(str(TINY_MODEL))
    short = {"prompt": [{"role": "user", "content": "Sort: 2 1"}], "completion": [{"role": "assistant",
                                                                                    "content": "1 2"}]}
    long = {"prompt": short["prompt"], "completion": [{"role": "assistant", "content": "1 2 " * 40}]}
    n_short = len(tokenizer.apply_chat_template(short["prompt"] + short["completion"], tokenize=True,
                                                return_dict=True)["input_ids"])
    job = training_job(tmp_path, TINY_MODEL, "sft", [short, long, short], adapter="full", max_length=n_short + 4)
    trainer, _, dropped = build_trainer(job)
    assert dropped == {"long_prompts": 0, "cut_answers": 1} and len(trainer.train_dataset) == 2
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert all(row["input_ids"][-1] == end for row in trainer.train_dataset)  # every answer keeps its end
