"""The ablation controls and the loop's instruments: `train.loss: sft`, the untrained-improver and
generator-off variants, drift monitors that stop a run, and the trackers (TensorBoard, read back)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_iterate
from safetensors.torch import load_file
from training_utils import preference_rows, tiny_policy, training_job

from synpo.io import read_jsonl

torch.set_num_threads(1)


def test_sft_loss_trains_the_chosen_side_exactly_as_sft_does(tmp_path):
    """`train.loss: sft` on pairs = TRL's SFT on (prompt, chosen) rows: the same steps, losses and weights,
    whatever the rejected side says."""
    from synpo.training.trainers import train

    policy = tiny_policy(tmp_path / "policy")
    pairs = preference_rows(24)
    common = dict(adapter="full", max_steps=4, learning_rate=1e-3)
    as_pairs = training_job(tmp_path, policy, "preference", pairs, name="pairs", loss="sft", **common)
    other_rejected = [{**p, "rejected": [{"role": "assistant", "content": "something else entirely"}]} for p in pairs]
    as_pairs_2 = training_job(tmp_path, policy, "preference", other_rejected, name="pairs2", loss="sft", **common)
    as_sft = training_job(tmp_path, policy, "sft", [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs],
                          name="sft", **common)
    results = [train(job) for job in (as_pairs, as_pairs_2, as_sft)]
    assert results[0]["steps"] == 4 and results[0]["train_loss"] > 0
    assert results[0]["train_loss"] == results[1]["train_loss"] == results[2]["train_loss"]
    weights = [load_file(str(Path(job.output) / "model.safetensors")) for job in (as_pairs, as_pairs_2, as_sft)]
    start = load_file(str(policy / "model.safetensors"))
    name = next(k for k in weights[0] if "layers.0.self_attn.q_proj" in k)
    assert not torch.equal(weights[0][name], start[name])  # it trained
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])

    dpo = training_job(tmp_path, policy, "preference", pairs, name="dpo", loss="dpo", beta=0.1, **common)
    assert train(dpo)["train_loss"] != results[0]["train_loss"]  # a preference loss is something else


# ---- the loop (minutes) ------------------------------------------------------------------------------

ABLATIONS = ["rounds=2", "improver.trained=false", "prompt_generator.enabled=false", "prompt_generator.num_prompts=96",
             "improver.sampling.temperature=0",
             *(["logging.report_to=[tensorboard]"] if importlib.util.find_spec("tensorboard") else [])]


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory) -> Path:
    """Two rounds with neither G nor R_t trained, reporting to TensorBoard."""
    run_dir = tmp_path_factory.mktemp("ablation") / "run"
    proc = run_iterate(run_dir, *ABLATIONS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_untrained_improver_and_seed_prompts_make_the_pairs_they_claim(ablation_run):
    from synpo.engines import Request, Sampling, make_engine
    from synpo.recipe import EngineConfig
    from synpo.stages.improver import improver_messages
    from synpo.toy import DATA, TINY_MODEL

    state = json.loads((ablation_run / "state.json").read_text())["stages"]
    assert "prompt_generator" not in state
    assert not any(k.endswith(("/improver", "/improver_data")) for k in state)  # no R_t, no data for it
    seed_prompts = {r["prompt"] for r in read_jsonl(DATA / "seed.jsonl")}
    prompts = {t: [r["prompt"] for r in read_jsonl(ablation_run / f"round_0{t}" / "prompts.jsonl")] for t in (1, 2)}
    for t in (1, 2):
        assert len(prompts[t]) == 96 and set(prompts[t]) <= seed_prompts
    assert not set(prompts[1]) & set(prompts[2])  # rounds draw disjoint slices of the seed set

    for t in (1, 2):
        responses = {r["id"]: r for r in read_jsonl(ablation_run / f"round_0{t}" / "responses.jsonl")}
        refined = read_jsonl(ablation_run / f"round_0{t}" / "refined.jsonl")
        assert {r["model"] for r in refined} == {"policy_0_as_improver"}
        assert all(r["draft"] == responses[r["id"]]["response"] for r in refined)  # π_{t-1}'s answers are refined
        pairs = read_jsonl(ablation_run / f"round_0{t}" / "pairs.jsonl")
        assert pairs and {p["chosen_model"] for p in pairs} == {"policy_0_as_improver"}
        by_id = {r["id"]: r for r in refined}
        for p in pairs:
            assert p["prompt"][0]["content"] in prompts[t]
            assert p["chosen"][0]["content"] == by_id[p["id"]]["refined"]
            assert p["rejected"][0]["content"] == responses[p["id"]]["initial_response"]

    # θ0 itself wrote the refinements: greedy θ0 on the improver template gives the same text
    rows = read_jsonl(ablation_run / "round_02" / "refined.jsonl")[:8]
    engine = make_engine(EngineConfig(kind="hf", batch_size=8), str(TINY_MODEL), dtype="float32")
    try:
        again = engine.generate([Request(r["id"], improver_messages(r["prompt"], r["draft"])) for r in rows],
                                Sampling(temperature=0.0, max_new_tokens=40))
    finally:
        engine.close()
    assert [c.text for c in again] == [r["refined"] for r in rows]


@pytest.mark.slow
def test_tensorboard_events_hold_the_rounds_metrics_and_the_policy_loss(ablation_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = ablation_run / "tracking" / "tensorboard"
    loop = EventAccumulator(str(root / "loop"))
    loop.Reload()
    metrics = {(r["round"]): r["metrics"]["exact_match"] for r in read_jsonl(ablation_run / "metrics.jsonl")}
    logged = {e.step: e.value for e in loop.Scalars("toy/exact_match")}
    assert logged.keys() == {0, 1, 2}
    assert all(abs(logged[t] - metrics[t]) < 1e-6 for t in metrics)
    for t in (1, 2):
        drift = json.loads((ablation_run / f"round_0{t}" / "drift.json").read_text())
        assert [e.value for e in loop.Scalars("drift/D/pairs") if e.step == t] == [drift["D"]["pairs"]]
        policy = EventAccumulator(str(root / f"round_0{t}_policy"))
        policy.Reload()
        losses = policy.Scalars("train/loss")
        assert losses and all(e.value > 0 for e in losses)
        assert [e.value for e in loop.Scalars("data/policy_pairs") if e.step == t] == [drift["D"]["pairs"]]


@pytest.mark.slow
def test_a_monitor_stops_the_run_and_a_raised_limit_resumes_it(mini_run, tmp_path):
    """A length limit stops the run after round 1 and a raised one resumes it. The limit is 0.5x round 0's
    length, not 1.0x: on the toy world the policy's answers shrink (θ0 wraps answers in filler that the
    pairs teach it to drop, about 0.6x in round 1; docs/ablations.md), so only a limit below that is
    crossed. The test checks the figure it stops on, so a run whose answers did not shrink fails here."""
    run_dir = tmp_path / "run"
    shutil.copytree(mini_run, run_dir)
    finished = {k: v["finished"] for k, v in json.loads((run_dir / "state.json").read_text())["stages"].items()}

    proc = run_iterate(run_dir, "rounds=2", "monitors.max_length_growth=0.5")
    assert proc.returncode == 2
    growth = json.loads((run_dir / "round_01" / "drift.json").read_text())["suites"]["toy"]["length_growth"]
    assert growth > 0.5
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: round 1: monitors.max_length_growth: toy mean answer length")
    assert f"{growth:.3f}x round 0's (limit 0.5x)" in message and "stopped before round 2" in message
    assert not (run_dir / "round_02").exists()
    assert json.loads((run_dir / "monitors_stop.json").read_text())["crossed"][0]["monitor"] == "max_length_growth"
    assert "STOPPED BY A MONITOR after round 1" in (run_dir / "report.md").read_text()

    proc = run_iterate(run_dir, "rounds=2", "monitors.max_length_growth=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = json.loads((run_dir / "state.json").read_text())["stages"]
    assert all(stages[k]["finished"] == v for k, v in finished.items())  # round 1 resumed, not redone
    assert "round_02/eval/toy" in stages
    assert not (run_dir / "monitors_stop.json").exists()
    assert "STOPPED" not in (run_dir / "report.md").read_text()
    assert "## Seconds per stage" in (run_dir / "report.md").read_text()
