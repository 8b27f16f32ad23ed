"""Benchmark the training modes side by side: LoRA vs PeriodicLoRA vs full fine-tuning, DPO and SimPO.

    python scripts/bench_training.py [--steps N] [--repeats 2] [--out runs/bench_training]

On two models: the shipped tiny model (1M parameters, SFT-trained) and a wider random-weight
stand-in built here (hidden 256, 6 layers). Every cell trains only the *policy stage* of SynPO's
round 1 on the same preference set D: the pairs that round 1 of recipes/tiny-cpu.yaml makes
(built once, by running the loop for one round into OUT/loop; chosen = the improver's rewrite,
rejected = π_0's answer, over the recipe's gap). So "toy acc" on the tiny model is the
benchmark accuracy after one SynPO round trained each way, and only the trainable part differs
between cells. Settings come from recipes/tiny-cpu.yaml's train section (learning rate, batch
size, warm-up, DPO's β and NLL weight; SimPO with β 2.0, γ 1.0, the same NLL weight), and by
default the recipe's epochs over D set the steps, the same for every mode. LoRA r=8, α=16 on
all linear layers; PeriodicLoRA folds at 4 equal stages.

Each cell runs `synpo.training.trainers.train` in its own process (so the peak RSS is that
cell's), on one torch thread; the three modes of a (model, loss) run back to back, `--repeats`
times in alternating order, and times and memory are averaged over the passes. Columns:
  s/step      the training loop's seconds per optimizer step (Trainer's train_runtime / steps:
              excludes loading and DPO's reference pass, includes PeriodicLoRA's folds)
  job s       wall seconds of the whole job (loading, DPO's reference pass, training, saving)
  peak RSS    the training process's maximum resident memory up to the end of training (before
              saving, which reloads a base to merge LoRA into); includes Python and torch, ~0.5 GB
  train MB    peak RSS minus the process's RSS after importing torch/transformers/TRL/PEFT: what
              loading the model, the data and training added
  final loss  mean training loss of the last 10 steps
  toy acc     exact-match accuracy on the whole toy benchmark (greedy, as the loop evaluates; tiny model only: the wide
              stand-in has random weights, so its accuracy is 0 whatever the training)
and, per (model, loss), PeriodicLoRA / LoRA ratios of step time and memory (target: within 5 %).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ["lora", "periodic_lora", "full"]


def build_models(out: Path) -> dict[str, Path]:
    from transformers import AutoTokenizer

    from synpo.toy import TINY_MODEL
    from synpo.toy.tiny_model import build_random_model, save_model

    wide = out / "models" / "wide-256x6"
    if not (wide / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(TINY_MODEL))
        model = build_random_model(tokenizer, seed=0, hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                                   num_key_value_heads=8, intermediate_size=768)
        save_model(model, tokenizer, wide)
    return {"tiny": Path(TINY_MODEL), "wide-256x6": wide}


def synpo_round_pairs(out: Path) -> Path:
    """D: round 1's pairs from the SynPO loop on recipes/tiny-cpu.yaml (run once, then reused)."""
    path = out / "loop" / "round_01" / "pairs.jsonl"
    if not path.exists():
        cmd = [sys.executable, "-m", "synpo.iterate", str(ROOT / "recipes" / "tiny-cpu.yaml"), "--set", "rounds=1",
               "--run-dir", str(out / "loop")]
        env = {**os.environ, "SYNPO_QUIET": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the SynPO round that builds D failed:\n{proc.stderr[-3000:]}")
    return path


def recipe_train_section() -> dict:
    import yaml

    train = yaml.safe_load((ROOT / "recipes" / "tiny-cpu.yaml").read_text())["train"]
    keep = ("beta", "nll_weight", "learning_rate", "batch_size", "warmup_ratio", "epochs")
    return {k: train[k] for k in keep if k in train}


LOSS_SETTINGS = {"dpo": {}, "simpo": {"beta": 2.0, "gamma": 1.0}}  # SimPO's β lives on another scale than DPO's


def run_cell(out: Path, model: Path, pairs: Path, loss: str, mode: str, steps: int, evaluate: bool) -> dict:
    work = out / "cells" / f"{model.name}-{loss}-{mode}"
    shutil.rmtree(work, ignore_errors=True)  # a fresh job each pass (no cached reference log-probs)
    from synpo.recipe import ModelConfig, PolicyTrainConfig
    from synpo.training.job import TrainingJob

    train = {**recipe_train_section(), **LOSS_SETTINGS[loss], "loss": loss, "adapter": mode, "max_steps": steps,
             "scheduler": "cosine", "max_length": 256,
             **({"periodic": {"stages": 4}} if mode == "periodic_lora" else {})}
    job = TrainingJob(kind="preference", model=str(model), base=ModelConfig(path=str(model), dtype="float32"),
                      data=str(pairs), output=str(work / "policy"), work_dir=str(work / "work"), seed=0, merge=True,
                      threads=1, train=PolicyTrainConfig.model_validate(train))
    Path(job.work_dir).mkdir(parents=True, exist_ok=True)
    spec_path = work / "job.json"
    spec_path.write_text(job.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SYNPO_QUIET": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child", str(spec_path)] + (["--evaluate"] if evaluate else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{work.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(job_path: str, evaluate: bool) -> None:
    import torch

    torch.set_num_threads(1)
    from synpo.progress import quiet_libraries

    quiet_libraries()
    import resource

    import synpo.training.merge as merge
    from synpo.training.job import TrainingJob
    from synpo.training.trainers import train

    peak = {}
    save_trained = merge.save_trained

    def measured_save(*args, **kwargs):  # training's peak, before saving reloads a base to merge into
        peak["kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return save_trained(*args, **kwargs)

    merge.save_trained = measured_save
    import peft  # noqa: F401  (the libraries' own memory is the baseline subtracted below)
    import trl  # noqa: F401
    from trl.experimental.cpo import CPOTrainer  # noqa: F401

    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    job = TrainingJob.model_validate_json(Path(job_path).read_text())
    started = time.perf_counter()
    metrics = train(job)
    result = {"s_per_step": metrics["train_seconds"] / metrics["steps"], "final_loss": metrics.get("final_loss"),
              "steps": metrics["steps"], "job_s": time.perf_counter() - started,
              "peak_rss_mb": peak["kb"] / 1024, "train_mb": (peak["kb"] - baseline_kb) / 1024}
    if evaluate:
        result["toy_acc"] = toy_accuracy(job.output)
    print(json.dumps(result))


def toy_accuracy(model_dir: str, limit: int | None = None) -> float:  # the whole benchmark, as the loop
    from synpo.engines.hf import HFEngine
    from synpo.evals.toy import evaluate, load_benchmark

    engine = HFEngine(model_dir, dtype="float32", batch_size=64)
    metrics, _ = evaluate(engine, load_benchmark(limit=limit))
    return metrics["overall"]["exact_match"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help="optimizer steps per cell (default: the recipe's epochs over D)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_training"))
    parser.add_argument("--repeats", type=int, default=2, help="timing passes per cell (alternating order)")
    parser.add_argument("--child")
    parser.add_argument("--evaluate", action="store_true")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.evaluate)

    import torch

    torch.set_num_threads(1)
    from synpo.progress import log, quiet_libraries

    quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = build_models(out)
    log("building D: one SynPO round of recipes/tiny-cpu.yaml ...")
    pairs = synpo_round_pairs(out)
    n_pairs = len(pairs.read_text().splitlines())
    train = recipe_train_section()
    args.steps = args.steps or math.ceil(math.ceil(n_pairs / train["batch_size"]) * train["epochs"])
    log(f"D: {n_pairs} pairs ({pairs}); settings from recipes/tiny-cpu.yaml: {train}")
    from synpo.toy import TINY_MODEL

    start_acc = toy_accuracy(str(TINY_MODEL))
    rows, started = [], time.time()
    for model_name, model in models.items():
        for loss in ("dpo", "simpo"):
            # The three modes of one (model, loss) run back to back, twice, the second time in reverse
            # order: on a shared machine load drifts, and a fixed order would bias the ratios.
            runs = {}
            for repeat in range(args.repeats):
                for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
                    log(f"{model_name} {loss} {mode} (pass {repeat + 1}) ...")
                    r = run_cell(out, model, pairs, loss, mode, args.steps,
                                 evaluate=model_name == "tiny" and repeat == 0)
                    runs.setdefault(mode, []).append(r)
                    log(f"  {r}")
            for mode in MODES:
                first = runs[mode][0]  # training is deterministic: loss and accuracy repeat exactly
                rows.append({"model": model_name, "loss": loss, "mode": mode, **first,
                             "s_per_step": _mean(x["s_per_step"] for x in runs[mode]),
                             "job_s": _mean(x["job_s"] for x in runs[mode]),
                             "peak_rss_mb": _mean(x["peak_rss_mb"] for x in runs[mode]),
                             "train_mb": _mean(x["train_mb"] for x in runs[mode]),
                             "final_losses": [x["final_loss"] for x in runs[mode]]})
    (out / "results.json").write_text(json.dumps({"rows": rows, "start_toy_acc": start_acc, "pairs": n_pairs,
                                                  "steps": args.steps}, indent=2))
    print_table(rows, start_acc, n_pairs, args.steps, time.time() - started)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def print_table(rows: list[dict], start_acc: float, n_pairs: int, steps: int, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"training modes: {steps} steps on D = {n_pairs} SynPO round-1 pairs, 1 thread "
                    f"(tiny start toy acc {start_acc:.3f}; {seconds / 60:.1f} min)")
    for col in ("model", "loss", "mode", "s/step", "job s", "peak RSS MB", "train MB", "final loss", "toy acc",
                "s/step ÷ LoRA", "RSS ÷ LoRA", "train MB ÷ LoRA"):
        t.add_column(col, justify="left" if col in ("model", "loss", "mode") else "right")
    lora = {(r["model"], r["loss"]): r for r in rows if r["mode"] == "lora"}
    for r in rows:
        base = lora[(r["model"], r["loss"])]
        acc = f"{r['toy_acc']:.3f}" if "toy_acc" in r else "-"
        t.add_row(r["model"], r["loss"], r["mode"], f"{r['s_per_step']:.3f}", f"{r['job_s']:.0f}",
                  f"{r['peak_rss_mb']:.0f}", f"{r['train_mb']:.0f}",
                  f"{r['final_loss']:.4f}" if r["final_loss"] is not None else "-", acc,
                  f"{r['s_per_step'] / base['s_per_step']:.3f}", f"{r['peak_rss_mb'] / base['peak_rss_mb']:.3f}",
                  f"{r['train_mb'] / base['train_mb']:.3f}")
    Console(width=160).print(t)


if __name__ == "__main__":
    main()
