"""`synpo export`: the cumulative preference data and the round's checkpoint in other pipelines' layouts."""

import json
import math
import shutil

import pytest
import torch

from synpo.cli import main as cli
from synpo.errors import UserError
from synpo.export import export
from synpo.io import write_json, write_jsonl
from synpo.toy import TINY_MODEL

torch.set_num_threads(1)


def pair(t: int, i: int) -> dict:
    a, b = (i * 7) % 10, (i * 3) % 10
    return {"id": f"r{t}-p{i:06d}", "prompt": [{"role": "user", "content": f"Sort these numbers: {a} {b} {i}"}],
            "chosen": [{"role": "assistant", "content": " ".join(map(str, sorted([a, b, i])))}],
            "rejected": [{"role": "assistant", "content": f"{a} {b}"}], "gap": 0.5, "round": t, "strategy": "synpo",
            "chosen_model": f"improver_{t}", "rejected_model": "policy_0"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished two-round run as synpo lays it out: state records, pairs per round, merged policies."""
    run = tmp_path_factory.mktemp("export") / "run"
    stages = {}
    for t in (1, 2):
        write_jsonl(run / f"round_{t:02d}" / "pairs.jsonl", [pair(t, i) for i in range(12)])
        shutil.copytree(TINY_MODEL, run / f"round_{t:02d}" / "policy")
        stages[f"round_{t:02d}/pairs"] = stages[f"round_{t:02d}/policy"] = {"fingerprint": "x", "summary": {}}
    write_json(run / "state.json", {"stages": stages})
    return run


def test_trl_export_loads_and_trains_with_dpo_trainer_unchanged(run_dir, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    out = tmp_path / "trl"
    assert cli(["export", str(run_dir), "--round", "2", "--to", str(out)]) == 0
    data = load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    assert len(data) == 24 and data.column_names == ["prompt", "chosen", "rejected"]
    assert data[0]["prompt"][0]["role"] == "user" and data[0]["chosen"][0]["role"] == "assistant"
    assert len(load_dataset(str(out), split="train")) == 24  # the parquet copy, via the dataset card

    model = AutoModelForCausalLM.from_pretrained(out / "model")  # the exported round-2 checkpoint
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-4,
                     use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no", max_length=128,
                     disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 3 and math.isfinite(result.training_loss)

    info = json.loads((out / "synpo_export.json").read_text())
    assert info["pairs"] == 24 and info["rounds"] == [1, 2] and info["round"] == 2
    provenance = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    assert {p["round"] for p in provenance} == {1, 2} and provenance[0]["chosen_model"] == "improver_1"


def test_round_one_export_holds_only_round_one(run_dir, tmp_path):
    info = export(run_dir, 1, str(tmp_path / "r1"), model=False)
    assert info["pairs"] == 12 and not (tmp_path / "r1" / "model").exists()


def test_alignment_handbook_layout(run_dir, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "handbook"
    export(run_dir, 2, str(out), fmt="alignment-handbook", model=False, test_fraction=0.25)
    ds = load_dataset(str(out))
    assert set(ds) == {"train_prefs", "test_prefs"}
    assert len(ds["train_prefs"]) + len(ds["test_prefs"]) == 24 and len(ds["test_prefs"]) > 0
    row = ds["train_prefs"][0]
    assert set(row) == {"prompt", "prompt_id", "chosen", "rejected", "messages"}
    assert isinstance(row["prompt"], str) and [m["role"] for m in row["chosen"]] == ["user", "assistant"]
    assert row["chosen"][0]["content"] == row["prompt"] == row["rejected"][0]["content"]
    assert row["messages"] == row["chosen"]
    again = tmp_path / "handbook2"
    export(run_dir, 2, str(again), fmt="alignment-handbook", model=False, test_fraction=0.25)
    assert load_dataset(str(again))["test_prefs"]["prompt_id"] == ds["test_prefs"]["prompt_id"]  # a fixed split


def test_llamafactory_preference_json_and_dataset_info(run_dir, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "lf"
    export(run_dir, 2, str(out), fmt="llamafactory", model=False)
    info = json.loads((out / "dataset_info.json").read_text())
    (name, entry), = info.items()
    assert entry == {"file_name": "synpo_prefs.json", "formatting": "sharegpt", "ranking": True,
                     "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}
    data = load_dataset("json", data_files=str(out / entry["file_name"]), split="train")
    assert len(data) == 24
    assert data[0]["conversations"][0]["from"] == "human" and data[0]["chosen"]["from"] == "gpt"


def test_export_errors(run_dir, tmp_path):
    with pytest.raises(UserError, match="round 3 has no finished pairs"):
        export(run_dir, 3, str(tmp_path / "x"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an earlier synpo export"):
        export(run_dir, 1, str(foreign))
    with pytest.raises(UserError, match="hf://OWNER/NAME"):
        export(run_dir, 1, "hf://just-a-name")
    assert cli(["export", str(tmp_path), "--round", "1", "--to", str(tmp_path / "y")]) == 2  # not a run
