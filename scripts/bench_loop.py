"""Ablations of the embedded default: named variants of recipes/tiny-cpu.yaml over several recipe seeds.

    python scripts/bench_loop.py                                   # every variant, seeds 0 1 2
    python scripts/bench_loop.py --variants recipe,sft --seeds 0   # a quick check of two variants
    python scripts/bench_loop.py --collect                         # only rebuild the tables

Each (variant, seed) is one loop run, `python -m synpo.iterate recipes/tiny-cpu.yaml --set seed=S` plus the
variant's `--set`s, in its own run directory OUT/runs/<variant>/seed_<S>. The loop resumes a run directory,
so an interrupted benchmark continues where it stopped: run the same command again. `--parallel 2` runs
two loops at once, each on one torch thread (runtime.threads=1, OMP_NUM_THREADS=1).

Shared stages: every variant with a given seed trains the same prompt generator G and, until its own
part of the recipe, makes the same round-1 data. So a fresh run directory starts from a copy of the donor
variant's (`--donor`, default the recipe) finished round-0 evaluation, G and round-1 data stages (not its
policy or evaluation): the loop checks each copied stage's fingerprint and re-runs the ones this variant
changes, so sharing never changes a result, it only skips repeated work. A variant waits for the donor's
round-1 pairs before it starts (no_generator, which trains no G, does not wait).

Writes OUT/bench_loop.json (every run's per-round metrics, pairs, drift figures and seconds per stage) and
OUT/bench_loop.md: toy exact match per round as mean ± sample standard deviation over the seeds that
finished, the pairs in D after the last round, and the wall minutes of a run (the sum of its stages).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny-cpu.yaml"

# name -> (what it is, the --set overrides of recipes/tiny-cpu.yaml)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("SynPO, the recipe (DPO + NLL, full fine-tuning)", []),
    "dpo_no_nll": ("DPO without the NLL term", ["train.nll_weight=0"]),
    "simpo": ("SimPO (β 2.0, γ 1.0, same NLL weight)", ["train.loss=simpo", "train.beta=2.0", "train.gamma=1.0"]),
    "sft_chosen": ("SFT on the chosen answers only", ["train.loss=sft"]),
    "untrained_improver": ("θ0 as the improver (no R_t training)", ["improver.trained=false"]),
    "no_generator": ("seed prompts instead of G's", ["prompt_generator.enabled=false"]),
    "sampling_ranking": ("Sampling-Ranking baseline, k = 4", ["pairs.strategy=sampling_ranking", "pairs.k=4"]),
    "lora": ("LoRA r = 8", ["train.adapter=lora"]),
    "periodic_lora": ("PeriodicLoRA, 4 folds", ["train.adapter=periodic_lora"]),
}
HEADLINE = ("toy", "exact_match")
SHARED = ["round_00/eval/toy", "prompt_generator", "round_01/prompts", "round_01/improver_data", "round_01/improver",
          "round_01/responses", "round_01/refined", "round_01/pairs"]
# the files those stages leave, relative to the run directory
SHARED_FILES = ["round_00", "prompt_generator", "prompt_generator_data.jsonl", "round_01/prompts.jsonl",
                "round_01/prompts_stats.json", "round_01/improver_data.jsonl", "round_01/improver",
                "round_01/responses.jsonl", "round_01/refined.jsonl", "round_01/pairs.jsonl",
                "round_01/pairs_stats.json"]


def run_dir_of(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / variant / f"seed_{seed}"


# shared stages a variant does not have (copied, the report would show the donor's)
NOT_SHARED = {"untrained_improver": ["round_01/improver_data", "round_01/improver"],
              "sampling_ranking": ["round_01/improver_data", "round_01/improver", "round_01/refined"]}


def share_from_donor(donor: Path, run_dir: Path, donor_running, skip: list[str]) -> None:
    """Start a fresh run_dir from the donor's finished shared stages (see the module docstring)."""
    import shutil

    from synpo.io import read_json, write_json

    if (run_dir / "state.json").exists():
        return  # not fresh: the loop resumes it as it is
    while donor_running() and not ((donor / "state.json").exists()
                                   and "round_01/pairs" in read_json(donor / "state.json")["stages"]):
        time.sleep(10)
    if not (donor / "state.json").exists():
        return
    stages = read_json(donor / "state.json")["stages"]
    if not all(k in stages for k in SHARED if k != "round_01/improver_data" and k != "round_01/improver"):
        return
    for name in SHARED_FILES:
        if (donor / name).is_dir():
            shutil.copytree(donor / name, run_dir / name)
        elif (donor / name).exists():
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(donor / name, run_dir / name)
    write_json(run_dir / "state.json", {"stages": {k: stages[k] for k in SHARED if k in stages and k not in skip}})


def run_one(out: Path, variant: str, seed: int, extra: list[str], donor: str | None, running: set) -> dict:
    run_dir = run_dir_of(out, variant, seed)
    if donor and variant not in (donor, "no_generator"):
        share_from_donor(run_dir_of(out, donor, seed), run_dir, lambda: (donor, seed) in running,
                         NOT_SHARED.get(variant, []))
    log = out / "logs" / f"{variant}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "synpo.iterate", str(RECIPE), "--run-dir", str(run_dir)]
    for o in [f"seed={seed}", "runtime.threads=1", *VARIANTS[variant][1], *extra]:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SYNPO_QUIET": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "HF_HUB_OFFLINE": "1"}
    started = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    running.discard((variant, seed))
    print(f"{variant} seed {seed}: exit {code} after {time.time() - started:.0f} s (log {log})", flush=True)
    return {"variant": variant, "seed": seed, "exit": code}


def read_run(run_dir: Path) -> dict | None:
    """A run directory's figures per round: metrics, pairs kept, drift and seconds per stage."""
    from synpo.io import read_json, read_jsonl
    from synpo.run import round_name, stage_key

    if not (run_dir / "state.json").exists():
        return None
    stages = read_json(run_dir / "state.json")["stages"]
    rounds: dict[int, dict] = {}
    if (run_dir / "metrics.jsonl").exists():
        for row in read_jsonl(run_dir / "metrics.jsonl"):
            rounds.setdefault(row["round"], {"metrics": {}})["metrics"][row["suite"]] = row["metrics"]
    for key, record in stages.items():
        if key.startswith("round_"):
            t, stage = int(key[6:8]), key[9:]
            rounds.setdefault(t, {"metrics": {}}).setdefault("seconds", {})[stage] = record["summary"].get("seconds")
    for t, entry in rounds.items():
        pairs = stages.get(stage_key(t, "pairs"), {}).get("summary", {})
        entry["pairs_kept"] = pairs.get("kept")
        entry["pairs_in_D"] = stages.get(stage_key(t, "policy"), {}).get("summary", {}).get("pairs")
        drift = run_dir / round_name(t) / "drift.json"
        if drift.exists():
            entry["drift"] = read_json(drift)
    once = {k: v["summary"].get("seconds") for k, v in stages.items() if not k.startswith("round_")}
    stopped = run_dir / "monitors_stop.json"
    return {"rounds": {str(t): rounds[t] for t in sorted(rounds)}, "once_seconds": once,
            "seconds": round(sum(v["summary"].get("seconds") or 0 for v in stages.values()), 1),
            "stopped_by_monitor": read_json(stopped) if stopped.exists() else None}


def mean_std(values: list[float], digits: int = 3, std_digits: int | None = None) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    std_digits = digits if std_digits is None else std_digits
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{std_digits}f}"


def table(results: dict, variants: list[str], seeds: list[int], rounds: int) -> str:
    suite, key = HEADLINE
    lines = [f"Toy exact match (mean ± sample std over the seeds that reached the round; n = seeds finished "
             f"of {len(seeds)} asked: {', '.join(map(str, seeds))})", "",
             "| variant | n | " + " | ".join(f"round {t}" for t in range(rounds + 1)) + " | pairs in D | wall min |",
             "|---|---:|" + "---:|" * (rounds + 3)]
    for variant in variants:
        runs = [results[variant].get(str(s)) for s in seeds]
        runs = [r for r in runs if r]
        finished = [r for r in runs if str(rounds) in r["rounds"] and r["rounds"][str(rounds)]["metrics"]]
        cells = []
        for t in range(rounds + 1):
            vals = [r["rounds"][str(t)]["metrics"][suite][key] for r in runs
                    if suite in r["rounds"].get(str(t), {}).get("metrics", {})]
            cells.append(mean_std(vals) + (f" (n={len(vals)})" if 0 < len(vals) != len(finished) else ""))
        pairs = [r["rounds"][str(rounds)].get("pairs_in_D") for r in finished]
        wall = [r["seconds"] / 60 for r in finished]
        lines.append(f"| {variant}: {VARIANTS[variant][0]} | {len(finished)} | " + " | ".join(cells)
                     + f" | {mean_std([p for p in pairs if p is not None], digits=0, std_digits=1)} | "
                     + (f"{statistics.mean(wall):.1f}" if wall else "-") + " |")
    return "\n".join(lines) + "\n"


def item_scores(run_dir: Path, t: int) -> dict[str, float] | None:
    """Round t's exact match per toy-benchmark item (1 or 0), by item id."""
    from synpo.io import read_jsonl
    from synpo.run import round_name

    path = run_dir / round_name(t) / "eval" / "toy" / "outputs.jsonl"
    return {r["id"]: float(r["score"] == 1.0) for r in read_jsonl(path)} if path.exists() else None


def paired_table(out: Path, variants: list[str], seeds: list[int], rounds: int, baseline: str) -> str:
    """Each variant against the baseline with the same seed, at the last round both reached: the exact-match
    difference on the same benchmark items, ± its standard error over the items (the noise of a 560-item
    benchmark alone; a seed's training noise comes on top, and only several seeds measure it)."""
    lines = [f"Paired with {baseline} (same seed, same items, the last round both reached): exact-match difference "
             "± its standard error over the benchmark items", "",
             "| variant | seed | round | difference | items where only the variant is right | only the baseline |",
             "|---|---:|---:|---:|---:|---:|"]
    for variant in variants:
        if variant == baseline:
            continue
        for seed in seeds:
            for t in range(rounds, 0, -1):
                mine = item_scores(run_dir_of(out, variant, seed), t)
                theirs = item_scores(run_dir_of(out, baseline, seed), t)
                if mine and theirs:
                    d = [mine[i] - theirs[i] for i in theirs]
                    se = statistics.stdev(d) / len(d) ** 0.5
                    lines.append(f"| {variant} | {seed} | {t} | {statistics.mean(d):+.3f} ± {se:.3f} | "
                                 f"{d.count(1.0)} | {d.count(-1.0)} |")
                    break
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated recipe seeds (default 0,1,2)")
    parser.add_argument("--parallel", type=int, default=1, help="loop runs at once, one torch thread each")
    parser.add_argument("--out", default="runs/bench_loop", help="benchmark directory (run dirs, logs, tables)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run (e.g. rounds=1 for a quick check)")
    parser.add_argument("--collect", action="store_true", help="run nothing; rebuild the tables from the run dirs")
    parser.add_argument("--donor", default="recipe",
                        help="the variant whose G and round-1 data fresh runs start from ('' for none)")
    parser.add_argument("--donor-elsewhere", action="store_true",
                        help="the donor's runs are being run by another process: wait for them as well")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    if not args.collect:
        # seed-major (every variant's seed 0 first); the donor and the variant that needs none lead each seed
        first = [args.donor, "no_generator"]
        jobs = [(v, s) for s in seeds for v in sorted(variants, key=lambda v: v not in first)]
        running = set(jobs) | ({(args.donor, s) for s in seeds} if args.donor_elsewhere else set())
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            list(pool.map(lambda job: run_one(out, job[0], job[1], args.set, args.donor or None, running), jobs))

    from synpo.io import write_json, write_text
    from synpo.recipe import load_recipe

    rounds = load_recipe(RECIPE, args.set, check_files=False).rounds
    results = {v: {str(s): read_run(out / "runs" / v / f"seed_{s}") for s in seeds} for v in variants}
    write_json(out / "bench_loop.json", {"recipe": str(RECIPE.relative_to(ROOT)), "rounds": rounds, "seeds": seeds,
                                         "variants": {v: {"description": VARIANTS[v][0], "overrides": VARIANTS[v][1],
                                                          "runs": results[v]} for v in variants}})
    text = table(results, variants, seeds, rounds)
    if args.donor in variants:
        text += "\n" + paired_table(out, variants, seeds, rounds, args.donor)
    write_text(out / "bench_loop.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
