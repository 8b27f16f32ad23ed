"""Small builders shared by the training tests: a random tiny policy, toy rows, a training job."""

from __future__ import annotations

import json
import random
from pathlib import Path

from synpo.recipe import ModelConfig, PolicyTrainConfig, TrainConfig
from synpo.toy import DATA, TINY_MODEL
from synpo.training.job import TrainingJob


def tiny_policy(out_dir: Path, seed: int = 0, **arch) -> Path:
    """A random-weight Llama stand-in with the shipped tokenizer and chat template, saved to out_dir."""
    from transformers import AutoTokenizer

    from synpo.toy.tiny_model import build_random_model, save_model

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_MODEL))
    save_model(build_random_model(tokenizer, seed=seed, **arch), tokenizer, out_dir)
    return out_dir


def seed_rows(n: int) -> list[dict]:
    with open(DATA / "seed.jsonl") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """TRL conversational pairs: gold answer chosen, another prompt's answer rejected."""
    rows = seed_rows(n)
    rng = random.Random(seed)
    others = [r["response"] for r in rows]
    rng.shuffle(others)
    return [{"id": f"p{i}", "prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["response"]}],
             "rejected": [{"role": "assistant", "content": o if o != r["response"] else o + " " + o}]}
            for i, (r, o) in enumerate(zip(rows, others))]


def sft_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["response"]}]} for r in seed_rows(n)]


def training_job(tmp: Path, model: Path, kind: str, rows: list[dict], name: str = "job", *, dtype: str = "float32",
                 chat_template: str | None = None, merge: bool | None = None, **train) -> TrainingJob:
    """A `synpo.training.trainers.train` job on `rows`, writing into tmp/name (merged when a preference job)."""
    from synpo.io import write_jsonl

    work = tmp / name / "work"
    work.mkdir(parents=True, exist_ok=True)
    data = tmp / name / "data.jsonl"
    write_jsonl(data, rows)
    defaults = dict(learning_rate=1e-3, batch_size=4, max_steps=6, warmup_ratio=0.0, scheduler="constant_with_warmup",
                    max_length=128, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    section = TrainConfig
    if kind == "preference":
        defaults.update(loss="simpo", beta=2.0, gamma=0.5, nll_weight=0.0)
        section = PolicyTrainConfig
    return TrainingJob(kind=kind, model=str(model), base=ModelConfig(path=str(model), dtype=dtype,
                                                                     chat_template=chat_template),
                       data=str(data), output=str(tmp / name / "out"), work_dir=str(work), seed=0,
                       merge=kind == "preference" if merge is None else merge, threads=1,
                       train=section.model_validate({**defaults, **train}))
