"""Benchmark the training modes side by side: LoRA vs PeriodicLoRA vs full fine-tuning, DPO and SimPO.

    python scripts/bench_training.py [--steps 60] [--out runs/bench_training]

On two models: the shipped tiny model (1M parameters, SFT-trained) and a wider random-weight
stand-in built here (hidden 256, 6 layers). Every cell trains only the *policy stage* on one
fixed preference set D, the same for every cell: the seed prompts with the gold answer as
chosen and the tiny model's own sampled answer as rejected, kept when the toy checker rates
gold higher by more than 0.05 (the shape of SynPO's pairs; building D through the whole loop
once per cell would mostly measure the loop's sampling noise). Loss settings (β, γ, NLL weight,
learning rate, batch size) are read from recipes/tiny-cpu.yaml; LoRA r=8, α=16 on all linear
layers; PeriodicLoRA folds at 4 equal stages.

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
  toy acc     exact-match accuracy on the toy benchmark (greedy; tiny model only: the wide
              stand-in has random weights, so its accuracy is 0 whatever the training)
and, per (model, loss), PeriodicLoRA / LoRA ratios of step time and memory (target: within 5 %).
"""

from __future__ import annotations

import argparse
import json
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


def build_pairs(out: Path, n_prompts: int) -> Path:
    """D: gold (chosen) vs the tiny model's sample (rejected) where the checker prefers gold by > 0.05."""
    from synpo.engines.base import Request, Sampling
    from synpo.engines.hf import HFEngine
    from synpo.io import read_jsonl, write_jsonl
    from synpo.toy import DATA, TINY_MODEL
    from synpo.toy.world import score

    path = out / "pairs.jsonl"
    if path.exists():
        return path
    seeds = read_jsonl(DATA / "seed.jsonl")[:n_prompts]
    engine = HFEngine(str(TINY_MODEL), dtype="float32", batch_size=64)
    requests = [Request(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in seeds]
    samples = engine.generate(requests, Sampling(temperature=0.7, max_new_tokens=40, seed=0))
    rows = []
    for r, c in zip(seeds, samples):
        if score(r["prompt"], r["response"]) - score(r["prompt"], c.text) > 0.05:
            rows.append({"id": r["id"], "prompt": [{"role": "user", "content": r["prompt"]}],
                         "chosen": [{"role": "assistant", "content": r["response"]}],
                         "rejected": [{"role": "assistant", "content": c.text}]})
    write_jsonl(path, rows)
    return path


def recipe_train_section() -> dict:
    import yaml

    train = yaml.safe_load((ROOT / "recipes" / "tiny-cpu.yaml").read_text())["train"]
    keep = ("beta", "gamma", "nll_weight", "learning_rate", "batch_size", "warmup_ratio")
    return {k: train[k] for k in keep if k in train}


def run_cell(out: Path, model: Path, pairs: Path, loss: str, mode: str, steps: int, evaluate: bool) -> dict:
    work = out / "cells" / f"{model.name}-{loss}-{mode}"
    shutil.rmtree(work, ignore_errors=True)  # a fresh job each pass (no cached reference log-probs)
    spec = {"kind": "preference", "model": str(model), "data": str(pairs), "output": str(work / "policy"),
            "work_dir": str(work / "work"), "seed": 0, "merge": True, "dtype": "float32", "threads": 1,
            "train": {**recipe_train_section(), "loss": loss, "adapter": mode, "max_steps": steps,
                      "scheduler": "cosine", "max_length": 256,
                      **({"periodic": {"stages": 4}} if mode == "periodic_lora" else {})}}
    Path(spec["work_dir"]).mkdir(parents=True, exist_ok=True)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SYNPO_QUIET": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child", str(spec_path)] + (["--evaluate"] if evaluate else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{work.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(spec_path: str, evaluate: bool) -> None:
    import torch

    torch.set_num_threads(1)
    from synpo.progress import quiet_libraries

    quiet_libraries()
    import resource

    import synpo.training.merge as merge
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
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    metrics = train(spec)
    result = {"s_per_step": metrics["train_seconds"] / metrics["steps"], "final_loss": metrics.get("final_loss"),
              "steps": metrics["steps"], "job_s": time.perf_counter() - started,
              "peak_rss_mb": peak["kb"] / 1024, "train_mb": (peak["kb"] - baseline_kb) / 1024}
    if evaluate:
        result["toy_acc"] = toy_accuracy(spec["output"])
    print(json.dumps(result))


def toy_accuracy(model_dir: str, limit: int = 300) -> float:
    from synpo.engines.hf import HFEngine
    from synpo.evals.toy import evaluate, load_benchmark

    engine = HFEngine(model_dir, dtype="float32", batch_size=64)
    metrics, _ = evaluate(engine, load_benchmark(limit=limit))
    return metrics["overall"]["exact_match"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=600, help="seed prompts sampled to build D")
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
    pairs = build_pairs(out, args.prompts)
    n_pairs = len(pairs.read_text().splitlines())
    log(f"D: {n_pairs} pairs ({pairs}); settings from recipes/tiny-cpu.yaml: {recipe_train_section()}")
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

    t = Table(title=f"training modes: {steps} steps on {n_pairs} fixed pairs, 1 thread "
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
