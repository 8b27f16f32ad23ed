"""bf16 vs fp32: does SynPO's policy stage learn the same in bfloat16 as in float32?

    python scripts/bench_bf16.py [--steps 24] [--pairs 384] [--out runs/bench_bf16]

Trains the embedded tiny model's policy stage with recipes/tiny-cpu.yaml's train section (DPO +
NLL, β 0.1, lr 3e-4, batch 16, warm-up 5 %) for `--steps` steps, in float32 and in bfloat16, with
full fine-tuning (fp32 master weights, bf16 autocast) and with PeriodicLoRA (a bf16 base; 4 folds
that carry their rounding), each in its own process on one torch thread. The pairs come from
the toy seed set: the gold answer chosen, π_0's greedy answer rejected where it is wrong (so
the preference is the one SynPO's round 1 teaches). Every trained model is then evaluated on the
whole toy benchmark (560 items, greedy, float32 compute), so the table compares what training
kept, not bf16 inference. Columns: final loss (the last logged, every 10 steps), toy exact match,
and the job's seconds. This script exists because a whole bf16 loop does not fit a CPU without
native bf16 (AVX2 only: a bf16 matmul is ~27x slower than fp32 there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pairs(n: int, out: Path) -> Path:
    """Gold chosen, π_0's wrong greedy answer rejected, for the first seed prompts π_0 gets wrong."""
    path = out / "pairs.jsonl"
    if path.exists():
        return path
    from synpo.engines.base import Request, Sampling
    from synpo.engines.hf import HFEngine
    from synpo.io import read_jsonl, write_jsonl
    from synpo.toy import DATA, TINY_MODEL
    from synpo.toy.world import parse_task, score_task

    seed = read_jsonl(DATA / "seed.jsonl")
    engine = HFEngine(str(TINY_MODEL), batch_size=128, dtype="float32")
    answers = engine.generate([Request(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in seed],
                              Sampling(temperature=0.0, max_new_tokens=40))
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["response"]}],
             "rejected": [{"role": "assistant", "content": a.text}]}
            for r, a in zip(seed, answers) if a.text and score_task(parse_task(r["prompt"]), a.text) < 1.0]
    write_jsonl(path, rows[:n])
    return path


def _job(out: Path, data: Path, dtype: str, adapter: str, steps: int) -> dict:
    import yaml

    from synpo.recipe import ModelConfig, PolicyTrainConfig
    from synpo.toy import TINY_MODEL
    from synpo.training.job import TrainingJob

    train = yaml.safe_load((ROOT / "recipes" / "tiny-cpu.yaml").read_text())["train"]
    train = {k: v for k, v in train.items() if k not in ("epochs", "start")}
    train.update(adapter=adapter, max_steps=steps)
    if adapter == "periodic_lora":
        train["periodic"] = {"stages": 4}
    name = f"{dtype}-{adapter}"
    work = out / name / "work"
    work.mkdir(parents=True, exist_ok=True)
    job = TrainingJob(kind="preference", model=str(TINY_MODEL), base=ModelConfig(path=str(TINY_MODEL), dtype=dtype),
                      data=str(data), output=str(out / name / "model"), work_dir=str(work), seed=0, merge=True,
                      threads=1, train=PolicyTrainConfig.model_validate(train))
    spec_path = work / "job.json"
    spec_path.write_text(job.model_dump_json())
    started = time.time()
    if not (out / name / "model" / "train_metrics.json").exists():
        subprocess.run([sys.executable, "-m", "synpo.training.launch", str(spec_path)], check=True)
    seconds = time.time() - started
    state = json.loads((out / name / "model" / "train_metrics.json").read_text())
    return {"name": name, "model": out / name / "model", "seconds": seconds, **state}


def _toy_em(model: Path) -> float:
    from synpo.engines.base import Sampling
    from synpo.engines.hf import HFEngine
    from synpo.evals import toy

    engine = HFEngine(str(model), batch_size=128, dtype="float32")
    metrics, _ = toy.evaluate(engine, toy.load_benchmark(), Sampling(temperature=0.0, max_new_tokens=40))
    engine.close()
    return metrics["overall"]["exact_match"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=384)
    parser.add_argument("--out", default="runs/bench_bf16")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from synpo.toy import TINY_MODEL

    data = _pairs(args.pairs, out)
    rows = [("θ0 (no training)", "", "", _toy_em(Path(TINY_MODEL)), "")]
    for adapter in ("full", "periodic_lora"):
        for dtype in ("float32", "bfloat16"):
            job = _job(out, data, dtype, adapter, args.steps)
            rows.append((adapter, dtype, f"{job.get('final_loss', float('nan')):.4f}", _toy_em(job["model"]),
                         f"{job['seconds']:.0f}"))
    pairs = len(data.read_text().splitlines())
    print(f"\npolicy stage, {args.steps} steps on {pairs} pairs (toy EM: 560 items, greedy, fp32)")
    print("| adapter | dtype | final loss | toy EM | job s |")
    print("|---|---|---:|---:|---:|")
    for adapter, dtype, loss, em, seconds in rows:
        print(f"| {adapter} | {dtype} | {loss} | {em:.3f} | {seconds} |")


if __name__ == "__main__":
    main()
