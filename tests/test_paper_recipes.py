"""The paper recipes: they validate as shipped, and run one round end to end on CPU with their
models swapped by `--set` for tiny local stand-ins (hf engine for vLLM, one process)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synpo.io import read_jsonl
from synpo.recipe import load_recipe
from tests.conftest import ROOT, child_env
from tests.paper_stand_ins import build_armo_like, build_reward_model, build_tiny_pairrm, copy_policy, paper_to_tiny

RECIPES = sorted((ROOT / "recipes").glob("*-synpo*.yaml"))


def test_every_paper_recipe_validates():
    assert {p.name for p in RECIPES} >= {"llama3-8b-synpo.yaml", "mistral-7b-synpo.yaml",
                                         "llama3-8b-synpo-lora.yaml", "llama3-8b-synpo-periodic-lora.yaml",
                                         "mistral-7b-synpo-lora.yaml", "mistral-7b-synpo-periodic-lora.yaml"}
    for path in RECIPES:
        recipe = load_recipe(path, check_files=False)
        assert recipe.name == path.stem  # a variant gets its own run directory
        assert recipe.rounds == 4 and recipe.pairs.per_round == 10_000 and recipe.prompt_generator.num_prompts == 50_000
        assert recipe.engine.kind == "vllm" and recipe.train.loss == "simpo" and recipe.train.gamma == 1.6
        assert recipe.responses.sampling.temperature == recipe.prompt_generator.sampling.temperature == 0.7
        assert recipe.train.accelerate_config and Path(ROOT / recipe.train.accelerate_config).is_file()


def test_paper_settings():
    llama = load_recipe(ROOT / "recipes" / "llama3-8b-synpo.yaml", check_files=False)
    mistral = load_recipe(ROOT / "recipes" / "mistral-7b-synpo.yaml", check_files=False)
    assert llama.model.path == "princeton-nlp/Llama-3-Base-8B-SFT"
    assert (llama.scorer.kind, llama.scorer.path, llama.improver.gap, llama.pairs.gap) == \
        ("reward_model", "RLHFlow/ArmoRM-Llama3-8B-v0.1", 0.02, 0.02)
    # ArmoRM runs custom code: the recipe file itself says so (not a default)
    raw = yaml.safe_load((ROOT / "recipes" / "llama3-8b-synpo.yaml").read_text())
    assert raw["scorer"]["trust_remote_code"] is True
    assert mistral.model.path == "alignment-handbook/zephyr-7b-sft-full"
    assert (mistral.scorer.kind, mistral.scorer.path, mistral.improver.gap) == ("pairwise", "llm-blender/PairRM", 0.2)
    for r in (llama, mistral):
        assert r.prompt_generator.train.learning_rate == r.improver.train.learning_rate == 1e-6
        assert r.prompt_generator.train.epochs == 3 and r.prompt_generator.train.batch_size * 8 == 32
        assert r.data.corpus.path == "tiiuae/falcon-refinedweb" and r.data.seed.limit == 18_000
    lora = load_recipe(ROOT / "recipes" / "llama3-8b-synpo-lora.yaml", check_files=False)
    periodic = load_recipe(ROOT / "recipes" / "llama3-8b-synpo-periodic-lora.yaml", check_files=False)
    assert (lora.train.adapter, periodic.train.adapter, periodic.prompt_generator.train.adapter) == \
        ("lora", "periodic_lora", "lora")
    assert lora.scorer == llama.scorer and lora.train.gamma == 1.6  # everything else comes from the base


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand_ins")
    return {"policy": copy_policy(root / "policy"), "rm": build_reward_model(root / "rm"),
            "armo": build_armo_like(root / "armo")}


def run_recipe(recipe: str, run_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "synpo.iterate", str(ROOT / "recipes" / recipe), "--run-dir", str(run_dir)]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=child_env(), cwd=ROOT)


def check_one_round(run_dir: Path, scorer_path: Path, engine: str = "hf"):
    state = json.loads((run_dir / "state.json").read_text())["stages"]
    assert list(state) == ["round_00/eval/toy", "prompt_generator", "round_01/prompts", "round_01/improver_data",
                           "round_01/improver", "round_01/responses", "round_01/refined", "round_01/pairs",
                           "round_01/policy", "round_01/eval/toy"]
    assert state["round_01/prompts"]["summary"]["kept"] > 0
    pairs = read_jsonl(run_dir / "round_01" / "pairs.jsonl")
    assert pairs and all(isinstance(p["gap"], float) for p in pairs)
    assert (run_dir / "round_01" / "policy" / "model.safetensors").exists()
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["scorer"]["path"] == str(scorer_path) and saved["engine"]["kind"] == engine


@pytest.mark.slow
def test_llama3_recipe_runs_one_round_with_a_tiny_custom_code_reward_model(stand_ins, tmp_path):
    # ArmoRM's stand-in is custom code too: the recipe's explicit trust_remote_code lets it run
    run = tmp_path / "llama3"
    proc = run_recipe("llama3-8b-synpo.yaml", run, paper_to_tiny(stand_ins["policy"], stand_ins["armo"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_one_round(run, stand_ins["armo"])
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["scorer"]["trust_remote_code"] is True and saved["train"]["gamma"] == 1.6


@pytest.mark.slow
def test_mistral_recipe_runs_one_round_with_a_tiny_scorer(stand_ins, tmp_path):
    # PairRM's stand-in is a tiny PairRM-architecture ranker when llm-blender (the pairrm extra) is
    # installed, so the recipe's own scorer.kind pairwise runs; otherwise a tiny reward model.
    from synpo.errors import UserError
    from synpo.scoring.pairwise import _import_blender

    try:
        _import_blender()
        scorer, kind = build_tiny_pairrm(tmp_path / "pairrm_stand_in"), "pairwise"
    except UserError:
        scorer, kind = stand_ins["rm"], "reward_model"
    run = tmp_path / "mistral"
    proc = run_recipe("mistral-7b-synpo.yaml", run, paper_to_tiny(stand_ins["policy"], scorer, kind))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_one_round(run, scorer)
    assert yaml.safe_load((run / "recipe.yaml").read_text())["scorer"]["kind"] == kind


def test_custom_code_scorer_without_trust_stops_before_any_stage(stand_ins, tmp_path):
    run = tmp_path / "refused"
    proc = run_recipe("llama3-8b-synpo.yaml", run, [*paper_to_tiny(stand_ins["policy"], stand_ins["armo"]),
                                                    "scorer.trust_remote_code=false"])
    assert proc.returncode == 2
    assert "set scorer.trust_remote_code: true" in proc.stderr
    assert not run.exists()  # found before the run directory is made


def cpu_variant(policy: Path, reward_model: Path, vllm: str | None) -> dict:
    """The Llama-3 paper recipe as a `base:` variant that swaps only sizes and the models (and, what a
    CPU machine has to: the data and evaluation sets offline, the toy ones). Its main path stays: full
    fine-tuning under ZeRO-3 on 2 processes, bf16, gradient checkpointing, SimPO, vLLM where it exists."""
    train = {"max_steps": 2, "batch_size": 2, "max_length": 256, "num_processes": 2}
    return {
        "base": str(ROOT / "recipes" / "llama3-8b-synpo.yaml"), "name": "llama3-8b-synpo-cpu", "rounds": 1,
        "model": {"path": str(policy)},
        "data": {"seed": {"path": "toy:seed.jsonl", "format": "jsonl", "prompt_field": "prompt",
                          "response_field": "response", "limit": 64},
                 "corpus": {"path": "toy:corpus.jsonl", "format": "jsonl", "text_field": "text",
                            "split_paragraphs": False}},
        "engine": {"kind": "vllm" if vllm else "hf", "python": vllm, "max_model_len": 512, "shard_size": 32},
        "scorer": {"path": str(reward_model), "max_length": 256, "batch_size": 16},
        # G must learn the <question> format to write any prompt: more steps at a higher rate
        "prompt_generator": {"num_prompts": 32, "sampling": {"max_new_tokens": 48}, "max_prompt_chars": 200,
                             "train": {**train, "max_steps": 24, "learning_rate": 3.0e-3, "warmup_ratio": 0.05}},
        "improver": {"gap": -1.0e9, "train": train, "seed_sampling": {"max_new_tokens": 32},
                     "sampling": {"max_new_tokens": 32}},
        "responses": {"sampling": {"max_new_tokens": 32}},
        "pairs": {"gap": -1.0e9, "per_round": 16},
        "train": {**train, "batch_size": 1, "learning_rate": 5.0e-4},
        "eval": {"suites": ["toy"], "limit": 8, "judge": None, "sampling": {"max_new_tokens": 32}},
        "runtime": {"device": "cpu", "threads": 1},
    }


@pytest.mark.slow  # ~6-10 min on 2 CPU cores: three ZeRO-3 trainings on 2 processes and the vLLM stages
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra is not installed")
def test_llama3_recipes_main_path_runs_one_round_on_cpu(stand_ins, tmp_path):
    from tests.test_engines import vllm_python

    recipe = tmp_path / "llama3-8b-synpo-cpu.yaml"
    recipe.write_text(yaml.safe_dump(cpu_variant(stand_ins["policy"], stand_ins["armo"], vllm_python())))
    loaded = load_recipe(recipe)
    paper = load_recipe(ROOT / "recipes" / "llama3-8b-synpo.yaml", check_files=False)
    assert (loaded.train.adapter, loaded.train.loss, loaded.model.dtype, loaded.train.gradient_checkpointing) == \
        ("full", "simpo", "bfloat16", True) and loaded.train.accelerate_config == paper.train.accelerate_config
    assert loaded.train.gamma == paper.train.gamma and loaded.scorer.trust_remote_code
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "synpo.iterate", str(recipe), "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=1800, env=child_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_one_round(run, stand_ins["armo"], engine="vllm" if vllm_python() else "hf")
    metrics = json.loads((run / "round_01" / "policy" / "train_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_loss"] == metrics["train_loss"]
