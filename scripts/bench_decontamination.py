"""Decontamination: how many lightly perturbed evaluation prompts are caught, how many clean
prompts are dropped by mistake, and how long 50k candidates take.

    python scripts/bench_decontamination.py --data-dir DIR --seed-dir DIR [--candidates 50000]

Evaluation prompts: AlpacaEval (805, from --data-dir, as eval.data_dir: the set is not shipped) and
Arena-Hard v0.1 (500). Each gets one perturbed copy with all three light changes: its case (lower, upper or
title case), its punctuation (all removed, or commas dropped and a "?" added) and one word
replaced by a random word of the seed sets. Clean prompts: the seed sets (Self-Instruct's 175
seed tasks `self_instruct_seed_tasks.jsonl`, yizhongw/self-instruct data/seed_tasks.jsonl, and
the 5,000-row Stanford Alpaca subset `alpaca_data_5000_subset_pr152.json`, tatsu-lab/stanford_alpaca
PR #152, instruction plus input) from --seed-dir. The candidate set for the timing holds the perturbed copies, the clean
prompts and perturbed copies of clean prompts, --candidates in all; the time is building the
index over the evaluation prompts plus checking every candidate, on one thread.

Rows: synpo's decontamination (near-duplicates by rapidfuzz + copied passages by 13-grams) and,
for comparison, the 13-gram rule alone (with exact matches after normalisation), which is what
synpo did before.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent


def seed_prompts(seed_dir: Path) -> list[str]:
    self_instruct = seed_dir / "self_instruct_seed_tasks.jsonl"
    alpaca = seed_dir / "alpaca_data_5000_subset_pr152.json"
    for path in (self_instruct, alpaca):
        if not path.is_file():
            sys.exit(f"error: {path} not found; give --seed-dir (Self-Instruct seed tasks, Stanford Alpaca subset)")
    prompts = [json.loads(line)["instruction"] for line in self_instruct.read_text().splitlines() if line.strip()]
    prompts += [r["instruction"] + (f"\n{r['input']}" if r.get("input") else "")
                for r in json.loads(alpaca.read_text())]
    return prompts


def perturb(prompt: str, rng: random.Random, vocabulary: list[str]) -> str:
    """Case, punctuation and one word changed."""
    tokens = prompt.split(" ")
    wordy = [i for i, t in enumerate(tokens) if re.search(r"[A-Za-z]", t)] or list(range(len(tokens)))
    i = rng.choice(wordy)
    tokens[i] = re.sub(r"[A-Za-z]+", rng.choice(vocabulary), tokens[i], count=1) if re.search(r"[A-Za-z]", tokens[i]) \
        else rng.choice(vocabulary)
    text = " ".join(tokens)
    text = rng.choice([str.lower, str.upper, str.title])(text)
    if rng.random() < 0.5:
        return re.sub(r"[^\w\s]", "", text)
    return text.replace(",", "").rstrip(".!?") + "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="evaluation sets, with AlpacaEval's (as eval.data_dir)")
    parser.add_argument("--seed-dir", required=True, help="directory of the two seed-set files")
    parser.add_argument("--candidates", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from synpo.decontamination import Decontaminator
    from synpo.evals.datasets import suite_prompts

    rng = random.Random(args.seed)
    suites = {s: suite_prompts(s, args.data_dir) for s in ("alpaca_eval", "arena_hard")}
    eval_prompts = [p for prompts in suites.values() for p in prompts]
    clean = seed_prompts(Path(args.seed_dir))
    vocabulary = sorted({w for p in clean for w in re.findall(r"[A-Za-z]{3,}", p)})
    perturbed = {s: [perturb(p, rng, vocabulary) for p in prompts] for s, prompts in suites.items()}
    filler = [perturb(clean[i % len(clean)], rng, vocabulary)
              for i in range(max(0, args.candidates - len(eval_prompts) - len(clean)))]
    candidates = [p for ps in perturbed.values() for p in ps] + clean + filler
    is_eval = [True] * len(eval_prompts) + [False] * (len(clean) + len(filler))

    rows = []
    for name, similarity in [("synpo (near-duplicates + 13-gram passages)", 0.8),
                             ("13-gram passages + exact matches only (before)", 1.0)]:
        started = time.perf_counter()
        reasons = Decontaminator(eval_prompts, similarity=similarity)(candidates)
        seconds = time.perf_counter() - started
        flagged = [r is not None for r in reasons]
        caught = {s: 0 for s in suites}
        offset = 0
        for s, ps in perturbed.items():
            caught[s] = sum(flagged[offset:offset + len(ps)])
            offset += len(ps)
        short = [i for i, p in enumerate(eval_prompts) if len(p.split()) < 13]
        caught_short = sum(flagged[i] for i in short)
        false_clean = sum(flagged[len(eval_prompts):len(eval_prompts) + len(clean)])
        false_all = sum(f for f, e in zip(flagged, is_eval) if not e)
        rows.append([name, *[f"{100 * caught[s] / len(ps):.1f}" for s, ps in perturbed.items()],
                     f"{100 * sum(caught.values()) / len(eval_prompts):.1f}",
                     f"{100 * caught_short / len(short):.1f}",
                     f"{100 * false_clean / len(clean):.2f}",
                     f"{100 * false_all / (len(candidates) - len(eval_prompts)):.2f}",
                     f"{seconds:.1f}"])
    header = ["method", "caught: AlpacaEval %", "caught: Arena-Hard %", "caught: all %", "caught: < 13 words %",
              "false positives: seed sets %", "false positives: all clean %",
              f"seconds ({len(candidates):,} candidates)"]
    print(f"{len(eval_prompts)} evaluation prompts ({', '.join(f'{s} {len(p)}' for s, p in suites.items())}); "
          f"{len(short)} under 13 words; {len(clean)} clean seed prompts; {len(candidates):,} candidates")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
