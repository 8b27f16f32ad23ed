"""`synpo export RUN_DIR --round N --to DIR|hf://OWNER/NAME [--format ...]`: a run's data and model
in the standard layouts other pipelines read.

What is exported: the cumulative preference data set D up to round N (every pair of rounds
1..N, as the round-N policy was trained on) and the round-N policy θ_N (a standard Hugging
Face checkpoint: safetensors, config, tokenizer with chat template, generation config).

Formats of the data:
- `trl` (default): TRL's conversational preference format: `prompt` (the user turn as a
  message list), `chosen` and `rejected` (the assistant turn as a message list), as
  `train.jsonl` and `data/train-00000-of-00001.parquet`. `DPOTrainer` / `CPOTrainer` take it
  unchanged: `load_dataset("json", data_files="DIR/train.jsonl")`.
- `alignment-handbook`: the layout of HuggingFaceH4/ultrafeedback_binarized that the
  handbook's recipes read: splits `train_prefs` and `test_prefs` of `prompt` (text),
  `prompt_id`, `chosen` / `rejected` (whole conversations: user turn then assistant turn)
  and `messages` (= chosen), as parquet under data/; `load_dataset(DIR)` finds the splits.
  The test split is a fixed, hash-chosen `--test-fraction` of the pairs.
- `llamafactory`: LLaMA-Factory's preference data in its sharegpt layout (`conversations`
  with the human turn, `chosen` / `rejected` gpt turns) as `synpo_prefs.json`, with the
  `dataset_info.json` entry (`ranking: true`) that registers it; copy both into
  LLaMA-Factory's data/ (or merge the entry) and train with `dataset: <the entry's name>`.

Every format also writes `provenance.jsonl` (per pair: id, round, gap, the models that wrote
each side) and `synpo_export.json`. A directory target is written atomically. A target
`hf://OWNER/NAME` uploads the data to the dataset repo OWNER/NAME and the model to the model
repo OWNER/NAME with huggingface_hub (token from the environment, e.g. HF_TOKEN; never
stored). Uploading cannot be tested offline; the files uploaded are exactly those a
directory export writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from synpo.errors import UserError
from synpo.io import atomic_dir, read_json, read_jsonl, write_json, write_jsonl, write_text
from synpo.run import round_name, stage_key

FORMATS = ("trl", "alignment-handbook", "llamafactory")
HUB_PREFIX = "hf://"


def cumulative_pairs(run_dir: Path, round_n: int) -> list[dict]:
    """Every pair of rounds 1..N (the data the round-N policy trained on), in round order."""
    state = read_json(run_dir / "state.json")["stages"] if (run_dir / "state.json").exists() else None
    if state is None:
        raise UserError(f"{run_dir}: not a synpo run directory (no state.json)")
    rows = []
    for t in range(1, round_n + 1):
        path = run_dir / round_name(t) / "pairs.jsonl"
        if stage_key(t, "pairs") not in state or not path.exists():
            raise UserError(f"--round {round_n}: round {t} has no finished pairs in {run_dir}; "
                            "export a finished round")
        rows += read_jsonl(path)
    if not rows:
        raise UserError(f"{run_dir}: rounds 1..{round_n} hold no pairs")
    return rows


def _turn(messages: list[dict], role: str) -> str:
    return next(m["content"] for m in messages if m["role"] == role)


def provenance(rows: list[dict]) -> list[dict]:
    keys = ("id", "round", "gap", "strategy", "chosen_model", "rejected_model")
    return [{k: r.get(k) for k in keys} for r in rows]


def trl_rows(rows: list[dict]) -> list[dict]:
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def handbook_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        prompt = _turn(r["prompt"], "user")
        chosen = [*r["prompt"], *r["chosen"]]
        out.append({"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "chosen": chosen,
                    "rejected": [*r["prompt"], *r["rejected"]], "messages": chosen})
    return out


def llamafactory_rows(rows: list[dict]) -> list[dict]:
    return [{"conversations": [{"from": "human", "value": _turn(r["prompt"], "user")}],
             "chosen": {"from": "gpt", "value": _turn(r["chosen"], "assistant")},
             "rejected": {"from": "gpt", "value": _turn(r["rejected"], "assistant")}} for r in rows]


def is_test_row(row_id: str, fraction: float) -> bool:
    """A fixed, order-independent choice of the held-out rows (by a hash of the pair id)."""
    return int(hashlib.sha256(f"test:{row_id}".encode()).hexdigest()[:8], 16) / 2**32 < fraction


def _parquet(rows: list[dict], path: Path) -> None:
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))


def _card(splits: list[str], title: str, body: str) -> str:
    configs = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in splits)
    return (f"---\nconfigs:\n- config_name: default\n  data_files:\n{configs}\ntags:\n- synpo\n- preference\n---\n\n"
            f"# {title}\n\n{body}\n")


def write_data(rows: list[dict], out: Path, fmt: str, name: str, test_fraction: float) -> dict:
    """The data set in `fmt` under `out`; returns counts per split."""
    if fmt == "trl":
        data = trl_rows(rows)
        write_jsonl(out / "train.jsonl", data)
        _parquet(data, out / "data" / "train-00000-of-00001.parquet")
        write_text(out / "README.md", _card(["train"], name, "SynPO preference pairs in TRL's conversational "
                                            "format (prompt / chosen / rejected message lists)."))
        counts = {"train": len(data)}
    elif fmt == "alignment-handbook":
        data = handbook_rows(rows)
        test = [d for d, r in zip(data, rows) if is_test_row(r["id"], test_fraction)]
        train = [d for d, r in zip(data, rows) if not is_test_row(r["id"], test_fraction)]
        if not test and len(train) > 1:  # keep test_prefs non-empty: the handbook evaluates on it
            test.append(train.pop())
        _parquet(train, out / "data" / "train_prefs-00000-of-00001.parquet")
        _parquet(test, out / "data" / "test_prefs-00000-of-00001.parquet")
        write_text(out / "README.md", _card(["train_prefs", "test_prefs"], name,
                                            "SynPO preference pairs in the alignment-handbook layout "
                                            "(as HuggingFaceH4/ultrafeedback_binarized)."))
        counts = {"train_prefs": len(train), "test_prefs": len(test)}
    else:
        data = llamafactory_rows(rows)
        (out / "synpo_prefs.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
        write_json(out / "dataset_info.json", {name: {
            "file_name": "synpo_prefs.json", "formatting": "sharegpt", "ranking": True,
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}})
        counts = {"train": len(data)}
    write_jsonl(out / "provenance.jsonl", provenance(rows))
    return counts


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a checkpoint file when on the same file system (a 16 GB model costs no space), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_model(policy: Path, out: Path) -> None:
    if (policy / "synpo_model.json").exists():
        raise UserError(f"{policy}: is a LoRA adapter, not a merged checkpoint; export needs the merged policy")
    shutil.copytree(policy, out, copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns("training_args.bin", "*.tmp"))


def export(run_dir: str | Path, round_n: int, to: str, fmt: str = "trl", model: bool = True,
           test_fraction: float = 0.05) -> dict:
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if round_n < 1:
        raise UserError(f"--round {round_n}: rounds start at 1")
    rows = cumulative_pairs(run_dir, round_n)
    policy = run_dir / round_name(round_n) / "policy"
    if model and not (policy / "config.json").exists():
        raise UserError(f"--round {round_n}: {policy} holds no trained policy; finish the round or pass --no-model")
    name = f"synpo-{run_dir.resolve().name}-round{round_n}"
    info = {"run": str(run_dir.resolve()), "round": round_n, "format": fmt, "pairs": len(rows),
            "rounds": sorted({r["round"] for r in rows}), "model": "model/" if model else None}

    def build(target: Path) -> None:
        info["splits"] = write_data(rows, target, fmt, name, test_fraction)
        if model:
            write_model(policy, target / "model")
        write_json(target / "synpo_export.json", info)

    if to.startswith(HUB_PREFIX):
        repo = to[len(HUB_PREFIX):]
        if repo.count("/") != 1:
            raise UserError(f"--to {to}: expected hf://OWNER/NAME")
        with tempfile.TemporaryDirectory(prefix="synpo-export-") as tmp:
            build(Path(tmp))
            push_to_hub(Path(tmp), repo, model)
        info["hub"] = repo
        return info
    target = Path(to)
    if target.exists() and any(target.iterdir()) and not (target / "synpo_export.json").exists():
        raise UserError(f"--to {to}: directory exists and is not an earlier synpo export; choose an empty one")
    with atomic_dir(target) as tmp:
        build(tmp)
    return info


def push_to_hub(folder: Path, repo: str, model: bool) -> None:
    """Upload the data (dataset repo) and the model (model repo) under the same OWNER/NAME."""
    from huggingface_hub import HfApi

    api = HfApi()  # the token comes from HF_TOKEN or the user's login, never from synpo's files
    try:
        api.create_repo(repo, repo_type="dataset", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset", ignore_patterns=["model/*"],
                          commit_message="synpo export: preference data")
        if model:
            api.create_repo(repo, repo_type="model", exist_ok=True)
            api.upload_folder(folder_path=str(folder / "model"), repo_id=repo, repo_type="model",
                              commit_message="synpo export: policy checkpoint")
    except Exception as e:  # network, auth, permissions: one line, no traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--to hf://{repo}: upload failed ({first}); check HF_TOKEN and the network") from None
