"""Generation throughput of synpo's engines on the tiny model, measured in one run.

    python scripts/bench_generation.py [--prompts 256] [--passes 3] [--max-new-tokens 48] [--vllm-python PY]

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
