import json
import subprocess
import sys

import pytest

from synpo.toy import TINY_MODEL


def synpo_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synpo.cli", *args], capture_output=True, text=True,
                          env={"SYNPO_QUIET": "1", "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})


def test_shipped_model_loads_with_plain_transformers_and_stops_at_end_of_turn():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 5e6
    ids = tok.apply_chat_template([{"role": "user", "content": "Reverse the order of these words: apple dog red"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert ids["input_ids"][0].tolist().count(tok.bos_token_id) == 1
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=30, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    assert new[-1] == tok.eos_token_id  # stopped at the end of its turn, not at the token limit
    assert tok.decode(new, skip_special_tokens=True).strip() == "red dog apple"


def test_hf_engine_batched_equals_one_by_one():
    from synpo.engines.base import Request, Sampling
    from synpo.engines.hf import HFEngine

    engine = HFEngine(str(TINY_MODEL), batch_size=4)
    prompts = ["What is 3 plus 4?", "Sort these numbers in descending order: 5, 17, 2",
               "Convert these words to uppercase: lion pear", "How many fruits are in this list: apple, dog, pear?",
               "List these words backwards: saw cat blue"]
    requests = [Request(str(i), [{"role": "user", "content": p}]) for i, p in enumerate(prompts)]
    batched = engine.generate(requests, Sampling(max_new_tokens=24))
    single = [engine.generate([r], Sampling(max_new_tokens=24))[0] for r in requests]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.id for c in batched] == [r.id for r in requests]


def test_sampling_is_deterministic_under_a_seed():
    from synpo.engines.base import Request, Sampling
    from synpo.engines.hf import HFEngine

    engine = HFEngine(str(TINY_MODEL))
    requests = [Request(str(i), [{"role": "user", "content": "Sort these numbers in ascending order: 9, 4, 7"}])
                for i in range(16)]
    a = engine.generate(requests, Sampling(temperature=1.0, seed=3, max_new_tokens=16))
    b = engine.generate(requests, Sampling(temperature=1.0, seed=3, max_new_tokens=16))
    c = engine.generate(requests, Sampling(temperature=1.0, seed=4, max_new_tokens=16))
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]
    assert len({x.text for x in a}) > 1  # temperature 1 really samples


def test_eval_json_shape_and_band():
    proc = synpo_cli("eval", "--suite", "toy", "--model", str(TINY_MODEL), "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    overall = metrics["overall"]
    assert set(overall) == {"exact_match", "score", "win_rate", "n"}
    assert overall["n"] == 560
    assert 0.25 <= overall["exact_match"] <= 0.60  # weak but not hopeless: room to self-boost
    assert overall["win_rate"] == pytest.approx(overall["exact_match"] / 2)
    assert sum(f["n"] for f in metrics["families"].values()) == 560
    assert len(metrics["families"]) == 7


def test_eval_table_lists_families_and_overall():
    proc = synpo_cli("eval", "--suite", "toy", "--model", str(TINY_MODEL), "--limit", "70")
    assert proc.returncode == 0, proc.stderr
    for word in ("family", "exact_match", "win_rate", "overall", "sort_numbers", "70"):
        assert word in proc.stdout


def test_grade_counts_partial_credit_and_ties():
    from synpo.evals.toy import grade

    rows = [{"prompt": "What is 2 plus 2?"}, {"prompt": "What is 2 plus 3?"}]
    metrics = grade(rows, ["4", "6"])
    assert metrics["overall"]["exact_match"] == 0.5
    assert metrics["overall"]["win_rate"] == 0.25
    assert 0.5 < metrics["overall"]["score"] < 1


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp: tmp / "missing-model", "model path does not exist"),
    (lambda tmp: tmp, "not a model directory (no config.json)"),
])
def test_bad_model_path_is_one_line_exit_2(tmp_path, make_path, message):
    path = make_path(tmp_path)
    proc = synpo_cli("eval", "--suite", "toy", "--model", str(path), "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and message in lines[0]
