"""scripts/bench_loop.py's bookkeeping on hand-made run directories (the runs themselves are the loop's)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from synpo.io import write_json, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_loop", ROOT / "scripts" / "bench_loop.py")
bench_loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_loop)


def fake_run(run_dir: Path, exact_match: list[float], pairs: list[int]) -> None:
    write_jsonl(run_dir / "metrics.jsonl", [{"round": t, "suite": "toy", "metrics": {"exact_match": em}}
                                            for t, em in enumerate(exact_match)])
    stages = {"round_00/eval/toy": {"seconds": 6.0}, "prompt_generator": {"seconds": 60.0}}
    for t, n in enumerate(pairs, start=1):
        stages[f"round_{t:02d}/pairs"] = {"kept": n, "seconds": 1.0}
        stages[f"round_{t:02d}/policy"] = {"pairs": sum(pairs[:t]), "seconds": 5.0}
    write_json(run_dir / "state.json", {"stages": {k: {"fingerprint": k, "summary": v, "finished": 0}
                                                   for k, v in stages.items()}})


def test_collect_writes_mean_and_sample_std_per_round(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "recipe" / "seed_0", [0.3, 0.4, 0.5, 0.6], [10, 20, 30])
    fake_run(runs / "recipe" / "seed_1", [0.3, 0.42, 0.52, 0.62], [12, 20, 30])
    fake_run(runs / "sft_chosen" / "seed_0", [0.3, 0.35], [10])  # stopped after round 1
    for variant, right in [("recipe", [1, 1, 0, 0]), ("sft_chosen", [1, 0, 1, 1])]:  # round 1, four items
        write_jsonl(runs / variant / "seed_0" / "round_01" / "eval" / "toy" / "outputs.jsonl",
                    [{"id": f"i{i}", "score": 1.0 if r else 0.5} for i, r in enumerate(right)])
    assert bench_loop.main(["--collect", "--variants", "recipe,sft_chosen", "--seeds", "0,1",
                            "--out", str(tmp_path)]) == 0
    table = (tmp_path / "bench_loop.md").read_text()
    assert "| recipe: SynPO, the recipe (DPO + NLL, full fine-tuning) | 2 | 0.300 ± 0.000 | 0.410 ± 0.014 | " \
           "0.510 ± 0.014 | 0.610 ± 0.014 | 61 ± 1.4 | 1.4 |" in table
    assert "| sft_chosen: SFT on the chosen answers only | 0 | 0.300 (n=1) | 0.350 (n=1) | - | - | - | - |" in table
    # differences 0, -1, +1, +1: mean +0.25, sample sd 0.957, SE 0.479
    assert "| sft_chosen | 0 | 1 | +0.250 ± 0.479 | 2 | 1 |" in table
    data = json.loads((tmp_path / "bench_loop.json").read_text())
    run = data["variants"]["recipe"]["runs"]["1"]
    assert run["rounds"]["3"]["pairs_in_D"] == 62 and run["rounds"]["1"]["seconds"] == {"pairs": 1.0, "policy": 5.0}
    assert data["variants"]["sft_chosen"]["runs"]["1"] is None
    assert data["variants"]["sft_chosen"]["overrides"] == ["train.loss=sft"]


def test_a_fresh_run_starts_from_the_donors_shared_stages(tmp_path):
    donor, fresh = tmp_path / "recipe", tmp_path / "variant"
    stages = {k: {"fingerprint": k, "summary": {"seconds": 1.0}, "finished": 0}
              for k in [*bench_loop.SHARED, "round_01/policy", "round_01/eval/toy"]}
    write_json(donor / "state.json", {"stages": stages})
    for name in ["round_01/pairs.jsonl", "round_01/responses.jsonl", "prompt_generator/model.safetensors"]:
        (donor / name).parent.mkdir(parents=True, exist_ok=True)
        (donor / name).write_text(name)
    (donor / "round_01" / "policy").mkdir()
    bench_loop.share_from_donor(donor, fresh, lambda: False, ["round_01/improver"])
    copied = json.loads((fresh / "state.json").read_text())["stages"]
    assert set(copied) == set(bench_loop.SHARED) - {"round_01/improver"}  # never the policy or its evaluation
    assert (fresh / "round_01" / "pairs.jsonl").read_text() == "round_01/pairs.jsonl"
    assert (fresh / "prompt_generator" / "model.safetensors").exists()
    assert not (fresh / "round_01" / "policy").exists()
    (fresh / "round_01" / "pairs.jsonl").write_text("mine")
    bench_loop.share_from_donor(donor, fresh, lambda: False, [])  # not fresh any more: left alone
    assert (fresh / "round_01" / "pairs.jsonl").read_text() == "mine"
