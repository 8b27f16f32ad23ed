"""Build the embedded default: the toy data splits and the tiny SFT model shipped in synpo/toy/assets.

    python scripts/build_tiny_model.py            # rebuild both in place (deterministic)
    python scripts/build_tiny_model.py --out /tmp/tiny --data-out /tmp/tiny-data --steps 300

Steps: write the seeded toy splits; train a byte-level BPE tokenizer on the SFT and seed
splits, the corpus and synpo's prompt templates; build a small Llama; SFT it with TRL on the
SFT split only; save safetensors + tokenizer + chat template + generation config; evaluate
it on the toy benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from synpo.toy import DATA, TINY_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(TINY_MODEL), help="model directory to write")
    parser.add_argument("--data-out", default=str(DATA), help="directory for the toy JSONL splits")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the toy splits")
    parser.add_argument("--steps", type=int, default=3000, help="SFT optimizer steps")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", type=json.loads, default={},
                        help='Llama config overrides, e.g. \'{"hidden_size": 256}\'')
    args = parser.parse_args()

    from importlib.metadata import version

    import torch

    torch.set_num_threads(args.threads)
    from synpo.engines.hf import HFEngine
    from synpo.evals import toy
    from synpo.io import atomic_dir, read_jsonl, write_json
    from synpo.progress import console
    from synpo.toy.splits import build_splits, write_splits
    from synpo.toy.tiny_model import build_random_model, save_model, sft_train, tokenizer_corpus, train_tokenizer

    started = time.time()
    write_splits(args.data_out, seed=args.seed)
    splits = build_splits(args.seed)
    templates = [p.read_text() for p in sorted((ROOT / "prompts").glob("*.jinja"))]
    tokenizer = train_tokenizer(tokenizer_corpus(splits, templates), vocab_size=args.vocab_size)
    model = build_random_model(tokenizer, seed=args.seed, **args.arch)
    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"tokenizer: {len(tokenizer)} tokens; model: {n_params / 1e6:.2f}M parameters")

    with atomic_dir(args.out) as tmp:
        train_started = time.time()
        stats = sft_train(model, tokenizer, splits["sft"], tmp / "trainer", steps=args.steps, lr=args.lr,
                          batch_size=args.batch_size, seed=args.seed)
        train_seconds = time.time() - train_started
        import shutil

        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        meta = {"script": "scripts/build_tiny_model.py", "args": vars(args) | {"out": None, "data_out": None},
                # bit-identical rebuilds need these versions: training is deterministic per library stack
                "libraries": {name: version(name) for name in ("torch", "transformers", "trl", "tokenizers")},
                "parameters": n_params, "sft": stats, "sft_seconds": round(train_seconds, 1)}
        save_model(model, tokenizer, tmp, meta)

    engine = HFEngine(args.out, batch_size=128)
    metrics, _ = toy.evaluate(engine, read_jsonl(Path(args.data_out) / "benchmark.jsonl"))
    console.print(toy.table(metrics, title=f"toy benchmark: {args.out}"))
    total = time.time() - started
    console.print(f"built in {total:.0f} s (SFT {train_seconds:.0f} s, {stats['steps']} steps)")
    meta |= {"benchmark": metrics["overall"], "total_seconds": round(total, 1)}
    write_json(Path(args.out) / "synpo_build.json", meta)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
