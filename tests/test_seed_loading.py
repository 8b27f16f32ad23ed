"""Seed and corpus files as users have them: byte-order marks, nested fields, blanks counted."""

import json

import pytest
from conftest import SHARED_DATA

from synpo.data.loaders import field, iter_corpus, read_seed
from synpo.recipe import CorpusData, SeedData

BOM = b"\xef\xbb\xbf"
SELF_INSTRUCT = SHARED_DATA / "seed" / "self_instruct_seed_tasks.jsonl"


def test_a_byte_order_mark_is_accepted_in_jsonl_and_json(tmp_path):
    (tmp_path / "seed.jsonl").write_bytes(BOM + b'{"prompt": "p1", "response": "a1"}\n'
                                                b'{"prompt": "p2", "response": "a2"}\n')
    alpaca = [{"instruction": "p1", "input": "", "output": "a1"}]
    (tmp_path / "seed.json").write_bytes(BOM + json.dumps(alpaca).encode())
    (tmp_path / "corpus.txt").write_bytes(BOM + b"Words about rivers.\n\nWords about hills.\n")
    jsonl = read_seed(SeedData(path=str(tmp_path / "seed.jsonl")))
    assert [(r["prompt"], r["response"]) for r in jsonl.rows] == [("p1", "a1"), ("p2", "a2")]
    alpaca = read_seed(SeedData(path=str(tmp_path / "seed.json"), format="alpaca"))
    assert [(r["prompt"], r["response"]) for r in alpaca.rows] == [("p1", "a1")]
    assert list(iter_corpus(CorpusData(path=str(tmp_path / "corpus.txt"), format="text"))) == [
        "Words about rivers.", "Words about hills."]


def test_blank_and_repeated_rows_are_dropped_and_counted_by_reason(tmp_path):
    rows = [{"prompt": "p1", "response": "a1"}, {"prompt": "  ", "response": "a"},
            {"prompt": "p2", "response": ""}, {"prompt": "p3", "response": None},
            {"prompt": "p1", "response": "again"}, {"prompt": "p4", "response": "a4"}]
    (tmp_path / "seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seed = read_seed(SeedData(path=str(tmp_path / "seed.jsonl")))
    assert [r["prompt"] for r in seed.rows] == ["p1", "p4"]
    assert seed.where == [f"{tmp_path / 'seed.jsonl'}:1", f"{tmp_path / 'seed.jsonl'}:6"]
    assert seed.dropped == {"blank prompt": 1, "blank answer": 2, "repeated prompt": 1}


def test_the_drop_count_is_logged_by_the_loop_loader(tmp_path, monkeypatch, capsys):
    from synpo.data.loaders import load_seed

    monkeypatch.delenv("SYNPO_QUIET", raising=False)
    (tmp_path / "seed.jsonl").write_text('{"prompt": "p", "response": "a"}\n{"prompt": "q", "response": " "}\n')
    assert len(load_seed(SeedData(path=str(tmp_path / "seed.jsonl")))) == 1
    assert "dropped 1 row(s), 1 with a blank answer; 1 kept" in capsys.readouterr().err


def test_dotted_paths_reach_nested_fields():
    row = {"instruction": "x", "instances": [{"input": "", "output": "y"}, {"output": "z"}]}
    assert field(row, "instances.0.output") == "y" and field(row, "instances.1.output") == "z"
    assert field(row, "instances.2.output") is field(row, "nothing") is field(row, "instruction.0") \
        is field(row, "instances.x")


def self_instruct_rows() -> list[dict]:
    """Self-Instruct seed tasks: the real file beside the checkout, else two rows in its format."""
    if SELF_INSTRUCT.is_file():
        return [json.loads(line) for line in SELF_INSTRUCT.read_text().splitlines()]
    return [{"id": "seed_task_0", "name": "a", "instruction": "Suggest a breakfast.",
             "instances": [{"input": "", "output": "Oatmeal."}], "is_classification": False},
            {"id": "seed_task_1", "name": "b", "instruction": "Is the sentence correct?",
             "instances": [{"input": "I goes home.", "output": "No."}], "is_classification": True}]


def test_self_instruct_seed_tasks_with_their_input_joined_as_alpaca_does(tmp_path):
    tasks = self_instruct_rows()
    path = tmp_path / "seed_tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    seed = read_seed(SeedData(path=str(path), prompt_field="instruction", response_field="instances.0.output",
                              input_field="instances.0.input"))
    assert len(seed.rows) == len(tasks) and not seed.dropped
    for row, task in zip(seed.rows, tasks):
        instance = task["instances"][0]
        prompt = task["instruction"].strip() + (f"\n\n{instance['input']}" if instance["input"].strip() else "")
        assert row["prompt"] == prompt.strip() and row["response"] == instance["output"].strip()
    assert any("\n\n" in r["prompt"] for r in seed.rows)  # some tasks have an input


@pytest.mark.skipif(not (SHARED_DATA / "seed" / "alpaca_data_5000_subset_pr152.json").is_file(),
                    reason="needs the shared Alpaca seed data")
def test_the_real_alpaca_subset_loads_and_reports_its_blank_answers():
    seed = read_seed(SeedData(path=str(SHARED_DATA / "seed" / "alpaca_data_5000_subset_pr152.json"), format="alpaca"))
    assert len(seed.rows) + sum(seed.dropped.values()) == 5000 and set(seed.dropped) <= {"blank answer",
                                                                                        "repeated prompt"}


def test_prompt_and_response_fields_are_honoured_on_rows_that_also_hold_a_conversation(tmp_path):
    """UltraFeedback's train_sft rows hold `prompt`, `chosen` (a conversation) and `messages`: the recipe's
    prompt_field / response_field decide, a conversation field giving its user / last assistant turn."""
    import datasets

    def chat(q, a):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    rows = [{"prompt": f"q{i}", "chosen": chat(f"q{i}", f"chosen {i}"), "rejected": chat(f"q{i}", f"rejected {i}"),
             "messages": chat(f"q{i}", f"messages {i}")} for i in range(3)]
    path = tmp_path / "uf"
    datasets.DatasetDict({"train_sft": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    seed = read_seed(SeedData(path=str(path), format="hf", split="train_sft", prompt_field="prompt",
                              response_field="rejected"))
    assert [(r["prompt"], r["response"]) for r in seed.rows] == [(f"q{i}", f"rejected {i}") for i in range(3)]
    # fields the rows lack: the conversation is read, as a ShareGPT row
    plain = read_seed(SeedData(path=str(path), format="hf", split="train_sft", prompt_field="instruction",
                               response_field="output"))
    assert [r["response"] for r in plain.rows] == [f"messages {i}" for i in range(3)]
