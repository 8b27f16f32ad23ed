"""Generation throughput of synpo's engines on the tiny model, measured in one run.

    python scripts/bench_generation.py [--prompts 256] [--passes 3] [--max-new-tokens 48] [--vllm-python PY]
    python scripts/bench_generation.py --data-parallel-only [--passes 5]   # the second table only

Rows: (a) a naive loop calling `model.generate` on one prompt at a time, (b) the hf engine as
recipes/tiny-cpu.yaml configures it, (c) the vllm engine (child process in the vLLM venv:
--vllm-python, $SYNPO_VLLM_PYTHON or .venv-vllm/bin/python; skipped when none exists), (d) the
openai engine against `transformers serve` on loopback (cache off). All greedy, the same
prompts (toy seed prompts) and token budget, one torch thread per process. Start-up (model
load, server start, a warm-up call on 8 prompts) is reported apart and not counted in the
rates; each engine then generates `--passes` sets of that many prompts (a fresh set each
pass, the same sets for every engine) and its median pass is reported: a pass of the hf
engine takes well under a second, so a single one is at the mercy of whatever else the
machine is doing. Generated tokens include the end-of-turn token.

A second table compares data parallelism on the CPU: the hf engine through the sharded stage
path (`generate_sharded`, shards of --shard-size prompts, batch = shard size) as 1 worker x 1
torch thread, 1 worker x 2 threads, and 2 workers x 1 thread (`engine.data_parallel_size: 2`,
two processes). The three run in turn on each pass's prompt set, so a change in the machine's
load falls on all three alike; the load average is printed beside the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SYNPO_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def prompts(n: int, offset: int = 0) -> list[str]:
    from synpo.io import read_jsonl
    from synpo.toy import DATA

    rows = read_jsonl(DATA / "seed.jsonl")
    return [rows[(offset + i) % len(rows)]["prompt"] for i in range(n)]


def naive(model_dir: str, sets: list[list[str]], max_new_tokens: int) -> tuple[float, list[tuple[float, int]]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def one_by_one(batch: list[str]) -> list[int]:
        counts = []
        for text in batch:
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            counts.append(out.shape[1] - ids["input_ids"].shape[1])
        return counts

    with torch.inference_mode():
        one_by_one(sets[0][:8])  # warm-up
        loaded = time.perf_counter()
        return loaded - start, _passes(one_by_one, sets)


def _passes(run, sets: list) -> list[tuple[float, int]]:
    """(seconds, generated tokens) of one run per prompt set."""
    out = []
    for batch in sets:
        started = time.perf_counter()
        tokens = sum(run(batch))
        out.append((time.perf_counter() - started, tokens))
    return out


def timed_engine(make, request_sets, sampling) -> tuple[float, list[tuple[float, int]]]:
    start = time.perf_counter()
    engine = make()
    try:
        engine.generate(request_sets[0][:8], sampling)  # warm-up (a server loads the model on its first request)
        loaded = time.perf_counter()
        passes = _passes(lambda rs: [c.num_tokens[0] for c in engine.generate(rs, sampling)], request_sets)
    finally:
        engine.close()
    return loaded - start, passes


def data_parallel_table(model: str, request_sets, sampling, shard_size: int) -> list[tuple]:
    """(name, start-up s, median pass s, completions/s, tokens/s) of 1x1, 1x2 and 2x1, passes interleaved."""
    import tempfile

    import torch

    from synpo.engines import make_engine
    from synpo.engines.base import generate_sharded
    from synpo.engines.hf import HFEngine
    from synpo.recipe import EngineConfig

    configs = [("1 worker x 1 thread", 1, 1), ("1 worker x 2 threads", 1, 2), ("2 workers x 1 thread", 2, 1)]
    engines, startup = {}, {}

    def sharded(engine, requests, threads):
        torch.set_num_threads(threads)
        try:
            with tempfile.TemporaryDirectory() as shards:
                return generate_sharded(engine, requests, sampling, shards, shard_size=shard_size)
        finally:
            torch.set_num_threads(1)

    for name, workers, threads in configs:
        print(f"starting {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        if workers == 1:
            engines[name] = HFEngine(model, dtype="float32", batch_size=shard_size)
        else:
            engines[name] = make_engine(EngineConfig(kind="hf", batch_size=shard_size, data_parallel_size=workers),
                                        model, dtype="float32")
        sharded(engines[name], request_sets[0][: 2 * 8], threads)  # warm-up; starts the workers
        startup[name] = time.perf_counter() - started
    passes = {name: [] for name, _, _ in configs}
    try:
        for k, requests in enumerate(request_sets):
            print(f"data-parallel pass {k + 1}/{len(request_sets)} ...", file=sys.stderr, flush=True)
            for name, _, threads in configs:
                started = time.perf_counter()
                out = sharded(engines[name], requests, threads)
                passes[name].append((time.perf_counter() - started, sum(c.num_tokens[0] for c in out)))
    finally:
        for engine in engines.values():
            engine.close()
    rows = []
    for name, _, _ in configs:
        seconds, tokens = sorted(passes[name])[len(passes[name]) // 2]
        rows.append((name, startup[name], seconds, len(request_sets[0]) / seconds, tokens / seconds))
    return rows


def vllm_python(arg: str | None) -> str | None:
    for candidate in (arg, os.environ.get("SYNPO_VLLM_PYTHON"), str(ROOT / ".venv-vllm" / "bin" / "python")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--vllm-python", default=None)
    parser.add_argument("--concurrency", type=int, default=8, help="openai engine: requests in flight")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per engine; the median is reported")
    parser.add_argument("--shard-size", type=int, default=64, help="data-parallel table: prompts per shard")
    parser.add_argument("--data-parallel-only", action="store_true", help="print the data-parallel table only")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from synpo.engines.base import Request, Sampling
    from synpo.engines.hf import HFEngine
    from synpo.engines.local_server import LocalServer
    from synpo.engines.openai import OpenAIEngine
    from synpo.engines.vllm import VLLMEngine
    from synpo.recipe import EngineConfig, load_recipe
    from synpo.toy import TINY_MODEL

    model = str(TINY_MODEL)
    # A fresh set of prompts per pass, so vLLM's prefix cache cannot serve a pass from the one
    # before (only the 8 warm-up prompts, the first of pass 1, are seen twice)
    sets = [prompts(args.prompts, offset=k * args.prompts) for k in range(args.passes)]
    request_sets = [[Request(f"b{k}-{i}", [{"role": "user", "content": t}]) for i, t in enumerate(texts)]
                    for k, texts in enumerate(sets)]
    sampling = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)
    if args.data_parallel_only:
        return print_data_parallel(str(TINY_MODEL), request_sets, sampling, args)
    rows = []

    def measure(name: str, run) -> None:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        startup, passes = run()
        seconds, tokens = sorted(passes)[len(passes) // 2]  # the median pass (by time)
        rows.append((name, startup, seconds, args.prompts / seconds, tokens / seconds))

    measure("(a) naive generate loop", lambda: naive(model, sets, args.max_new_tokens))
    hf_cfg = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml").engine  # as the tiny run generates
    measure(f"(b) hf engine (batch {hf_cfg.batch_size})",
            lambda: timed_engine(lambda: HFEngine(model, dtype="float32", batch_size=hf_cfg.batch_size),
                                 request_sets, sampling))
    python = vllm_python(args.vllm_python)
    if python:
        cfg = EngineConfig(kind="vllm", python=python)
        measure("(c) vllm engine (CPU, child process)",
                lambda: timed_engine(lambda: VLLMEngine(model, cfg=cfg, dtype="float32"), request_sets, sampling))
    else:
        print("(c) vllm: no vLLM environment (scripts/setup_vllm_env.sh); row skipped", file=sys.stderr)
    server = LocalServer()
    started = time.perf_counter()
    with server:
        server_startup = time.perf_counter() - started
        cfg = EngineConfig(kind="openai", base_url=server.base_url, cache=False, concurrency=args.concurrency)
        measure(f"(d) openai engine -> transformers serve (concurrency {args.concurrency})",
                lambda: timed_engine(lambda: OpenAIEngine(cfg, model=model), request_sets, sampling))
    name, startup, *rest = rows[-1]
    rows[-1] = (name, startup + server_startup, *rest)

    base = rows[0][3]
    print(f"\nGeneration on the tiny model: {args.prompts} prompts, greedy, max {args.max_new_tokens} new tokens, "
          f"1 torch thread per process; median of {args.passes} passes\n")
    print("| engine | completions/s | generated tokens/s | vs (a) | start-up s | generate s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, startup, seconds, cps, tps in rows:
        print(f"| {name} | {cps:.1f} | {tps:.0f} | {cps / base:.1f}x | {startup:.1f} | {seconds:.1f} |")
    return print_data_parallel(model, request_sets, sampling, args)


def print_data_parallel(model: str, request_sets, sampling, args) -> int:
    load_before = os.getloadavg()
    rows = data_parallel_table(model, request_sets, sampling, args.shard_size)
    load_after = os.getloadavg()
    base = rows[0][3]
    print(f"\nData parallelism on the CPU ({os.cpu_count()} cores): hf engine, {args.prompts} prompts in shards of "
          f"{args.shard_size}, greedy, max {args.max_new_tokens} new tokens; median of {args.passes} interleaved "
          f"passes; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| hf engine | completions/s | generated tokens/s | vs 1 worker x 1 thread | start-up s | generate s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, startup, seconds, cps, tps in rows:
        print(f"| {name} | {cps:.1f} | {tps:.0f} | {cps / base:.2f}x | {startup:.1f} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
