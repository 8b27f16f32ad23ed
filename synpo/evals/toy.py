"""The toy benchmark: generate answers to held-out toy tasks and grade them with the checker.

Metrics per family and overall: mean checker score, exact-match accuracy, and win rate
against the gold answer (ties count half). The gold answer always scores 1, so a response
ties only when it is exactly right: the win rate is half the exact-match rate, the toy
mirror of AlpacaEval's win rate against a reference that is never beaten.
"""

from __future__ import annotations

from collections import defaultdict

from synpo.engines.base import Request, Sampling
from synpo.toy import DATA
from synpo.toy.world import parse_task, score_task

BENCHMARK = DATA / "benchmark.jsonl"


def grade(rows: list[dict], responses: list[str]) -> dict:
    """Aggregate checker metrics for benchmark `rows` and the model's `responses`."""
    by_family: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row, response in zip(rows, responses, strict=True):
        task = parse_task(row["prompt"])
        s = score_task(task, response)
        by_family[task.family].append((s, float(s == 1.0)))

    def summary(items):
        n = len(items)
        em = sum(e for _, e in items) / n
        # vs the gold answer (score 1): a win is impossible, an exact answer ties (half a win)
        return {"exact_match": em, "score": sum(s for s, _ in items) / n, "win_rate": 0.5 * em, "n": n}

    everything = [x for items in by_family.values() for x in items]
    return {"overall": summary(everything),
            "families": {f: summary(items) for f, items in sorted(by_family.items())}}


def load_benchmark(path=BENCHMARK, limit: int | None = None, seed: int = 0) -> list[dict]:
    import random

    from synpo.io import read_jsonl

    rows = read_jsonl(path)
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows


def evaluate(engine, rows: list[dict], sampling: Sampling | None = None, shard_dir=None) -> tuple[dict, list[dict]]:
    """Metrics and per-item outputs of `engine` on benchmark `rows` (greedy by default)."""
    from synpo.engines.base import generate_sharded

    sampling = sampling or Sampling(temperature=0.0, max_new_tokens=48)
    requests = [Request(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in rows]
    if shard_dir is None:
        completions = engine.generate(requests, sampling)
    else:
        completions = generate_sharded(engine, requests, sampling, shard_dir, desc="eval toy")
    responses = [c.text for c in completions]
    outputs = [{"id": r["id"], "prompt": r["prompt"], "family": r["family"], "output": out,
                "reference": r["reference"], "score": score_task(parse_task(r["prompt"]), out)}
               for r, out in zip(rows, responses)]
    return grade(rows, responses), outputs


def table(metrics: dict, title: str = "toy benchmark"):
    from rich.table import Table

    t = Table(title=title)
    for col in ("family", "n", "exact_match", "score", "win_rate"):
        t.add_column(col, justify="left" if col == "family" else "right")
    for name, m in [*metrics["families"].items(), ("overall", metrics["overall"])]:
        t.add_row(name, str(m["n"]), f"{m['exact_match']:.3f}", f"{m['score']:.3f}", f"{m['win_rate']:.3f}",
                  end_section=name == list(metrics["families"])[-1])
    return t
