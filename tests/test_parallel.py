"""Data parallelism: a generation stage on 1 and 2 workers writes the same bytes (hf on CPU, vLLM's
CPU build where its venv exists); a worker killed mid-stage costs only its unfinished shard; Ray
actors on a simulated two-node cluster write what one engine writes; reward-model and PairRM
copies give the scores one copy gives."""

import filecmp
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from synpo.engines import make_engine
from synpo.engines.base import Request, Sampling, generate_sharded
from synpo.engines.parallel import DataParallelEngine
from synpo.errors import UserError
from synpo.io import read_jsonl, write_jsonl
from synpo.recipe import EngineConfig, ScorerConfig, load_recipe, resolve_path
from synpo.scoring import make_scorer, score_gaps, score_groups
from synpo.toy import DATA, TINY_MODEL
from tests.paper_stand_ins import build_reward_model, build_tiny_pairrm
from tests.test_engines import vllm_python
from tests.test_scorers import PROMPTS, RESPONSES

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
torch.set_num_threads(1)
SAMPLING = Sampling(temperature=1.0, seed=7, max_new_tokens=24)


@pytest.fixture(autouse=True)
def quiet_workers(monkeypatch):
    monkeypatch.setenv("SYNPO_QUIET", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # workers import this directory's modules (the paced engine below) and this checkout's synpo
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]))


def requests(n: int) -> list[Request]:
    return [Request(r["id"], [{"role": "user", "content": r["prompt"]}])
            for r in read_jsonl(DATA / "benchmark.jsonl")[:n]]


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        filecmp.cmp(a / n, b / n, shallow=False) for n in names)


# ---- a real stage on 1 and 2 workers -----------------------------------------------------


@pytest.mark.slow
def test_responses_stage_on_two_hf_workers_writes_the_bytes_one_writes(tmp_path):
    from synpo.iterate import run_stages
    from synpo.stages.responses import generate_responses

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": r["id"], "prompt": r["prompt"]} for r in read_jsonl(DATA / "benchmark.jsonl")[:40]])
    outputs = {}
    for workers in (1, 2):
        recipe = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", [
            f"engine.data_parallel_size={workers}", "engine.shard_size=8", "engine.batch_size=8",
            "responses.sampling.max_new_tokens=24"])
        work = tmp_path / f"work{workers}"
        engine = make_engine(recipe.engine, TINY_MODEL)
        assert isinstance(engine, DataParallelEngine) == (workers == 2)
        engine.close()
        model = resolve_path(recipe.model.path)
        inputs = next(s.inputs for s in run_stages(recipe) if s.key == "round_01/responses")
        generate_responses(inputs, model, model, prompts, tmp_path / f"out{workers}.jsonl", work)
        outputs[workers] = work
    assert len(list((outputs[1] / "initial").glob("shard-*.jsonl"))) == 5
    assert same_files(outputs[1] / "initial", outputs[2] / "initial")
    assert filecmp.cmp(tmp_path / "out1.jsonl", tmp_path / "out2.jsonl", shallow=False)


def test_a_worker_that_cannot_start_is_the_users_error():
    engine = make_engine(EngineConfig(kind="hf", data_parallel_size=2), "/nonexistent/model")
    with pytest.raises(UserError, match="nonexistent"):
        engine.generate(requests(1), SAMPLING)
    engine.close()


def test_more_workers_than_gpus_is_a_clear_error(monkeypatch):
    import synpo.parallel as parallel

    monkeypatch.setattr(parallel, "visible_gpus", lambda: ["0", "1", "2", "3"])
    assert parallel.gpu_groups(None, 2, "engine.data_parallel_size") == [["0", "1"], ["2", "3"]]
    assert parallel.gpu_groups(4, 1, "engine.data_parallel_size") == [["0"], ["1"], ["2"], ["3"]]
    with pytest.raises(UserError, match="3 workers x 2 GPU"):
        parallel.gpu_groups(3, 2, "engine.data_parallel_size")
    monkeypatch.setattr(parallel, "visible_gpus", lambda: [])
    assert parallel.gpu_groups(None, 2, "x") == [[]] and parallel.gpu_groups(3, 1, "x") == [[], [], []]


class EnvProbe:
    """Served by a worker: reads the worker's own environment."""

    def get(self, name: str) -> str | None:
        return os.environ.get(name)


def test_each_worker_sees_only_its_own_gpu_group(monkeypatch):
    import synpo.parallel as parallel

    monkeypatch.setattr(parallel, "visible_gpus", lambda: ["0", "1", "2", "3"])
    pool = parallel.Pool(parallel.Spec("test_parallel:EnvProbe"), count=None, gpus_per_worker=2, ray_address=None,
                         field_name="engine.data_parallel_size")
    try:
        assert [w.call("get", "CUDA_VISIBLE_DEVICES") for w in pool.workers] == ["0,1", "2,3"]
        threads = str(max(1, (os.cpu_count() or 1) // 2))  # the CPU cores shared out
        assert [w.call("get", "OMP_NUM_THREADS") for w in pool.workers] == [threads, threads]
    finally:
        pool.close()


def test_placement_is_no_part_of_a_stage_fingerprint():
    from synpo.iterate import run_stages, source_fingerprints
    from synpo.run import fingerprints

    plain = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", ["eval.engine={kind: hf}"])
    spread = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", [
        "eval.engine={kind: hf, data_parallel_size: 4, ray_address: auto}", "scorer.data_parallel_size=2"])
    assert fingerprints(run_stages(plain), source_fingerprints(plain, ["a"])) == \
        fingerprints(run_stages(spread), source_fingerprints(spread, ["a"]))


def test_openai_engine_refuses_data_parallel_settings():
    with pytest.raises(ValueError, match="data_parallel_size"):
        EngineConfig(kind="openai", base_url="http://x/v1", data_parallel_size=2)


@pytest.mark.slow
@pytest.mark.skipif(vllm_python() is None, reason="no vLLM environment (scripts/setup_vllm_env.sh)")
def test_vllm_cpu_on_two_workers_writes_the_bytes_one_writes(tmp_path):
    dirs = {}
    for workers in (1, 2):
        cfg = EngineConfig(kind="vllm", python=vllm_python(), data_parallel_size=workers)
        engine = make_engine(cfg, TINY_MODEL, dtype="float32")
        try:
            # 40 requests in shards of 16 on 2 workers: 4 jobs of 10, cut across shards (per-request seeds)
            generate_sharded(engine, requests(40), SAMPLING, tmp_path / f"w{workers}", shard_size=16)
        finally:
            engine.close()
        dirs[workers] = tmp_path / f"w{workers}"
    assert same_files(dirs[1], dirs[2])


# ---- a worker killed mid-stage -------------------------------------------------------------


def paced_engine(cfg, model, **options):
    """The hf engine, one shard a second, so a kill lands mid-stage (built inside a worker)."""
    engine = make_engine(cfg, model, **options)
    generate = engine.generate

    def slow(requests, sampling):
        out = generate(requests, sampling)
        time.sleep(1.0)
        return out

    engine.generate = slow
    return engine


@pytest.mark.slow
def test_a_killed_worker_costs_only_its_unfinished_shard(tmp_path):
    shards = tmp_path / "shards"
    cfg = EngineConfig(kind="hf", batch_size=8, data_parallel_size=2)
    engine = DataParallelEngine(cfg, TINY_MODEL, {"dtype": "float32"}, factory="test_parallel:paced_engine")
    killed = []

    def kill_one_worker_after_two_shards():
        deadline = time.time() + 300
        while time.time() < deadline and len(list(shards.glob("shard-*.jsonl"))) < 2:
            time.sleep(0.05)
        victim = engine.pool.workers[0]
        os.kill(victim.pid, 9)
        killed.append(victim.pid)

    watcher = threading.Thread(target=kill_one_worker_after_two_shards, daemon=True)
    watcher.start()
    try:
        with pytest.raises(RuntimeError, match=r"worker 0 .* on shard \d+.*run the same command again") as error:
            generate_sharded(engine, requests(64), SAMPLING, shards, shard_size=8)
    finally:
        engine.close()
    watcher.join()
    assert killed
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.jsonl")}
    # the survivor took every shard left: only the one the killed worker was on is missing
    assert len(finished) == 7, error.value

    one = make_engine(EngineConfig(kind="hf", batch_size=8), TINY_MODEL, dtype="float32")
    resumed_engine = make_engine(EngineConfig(kind="hf", batch_size=8, data_parallel_size=2), TINY_MODEL,
                                 dtype="float32")
    try:
        resumed = generate_sharded(resumed_engine, requests(64), SAMPLING, shards, shard_size=8)
        pids = {w.pid for w in resumed_engine.pool.workers}
        assert len(pids) == 2 and os.getpid() not in pids  # two processes of their own
        # a plain call (not a sharded stage) runs whole on one worker: one engine's answer
        assert resumed_engine.generate(requests(8), SAMPLING) == one.generate(requests(8), SAMPLING)
    finally:
        resumed_engine.close()
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.jsonl")}
    assert len(after) == 8
    assert {n: after[n] for n in finished} == finished  # finished shards were read, not rewritten

    assert resumed == generate_sharded(one, requests(64), SAMPLING, tmp_path / "whole", shard_size=8)
    assert same_files(shards, tmp_path / "whole")


# ---- Ray: a simulated two-node cluster -----------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    from ray.cluster_utils import Cluster

    small = {"object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **small})
    for _ in range(2):  # two nodes with one CPU each: two single-CPU bundles must land on both
        cluster.add_node(num_cpus=1, **small)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_ray_actors_on_two_nodes_write_what_one_engine_writes(ray_cluster, tmp_path):
    cfg = EngineConfig(kind="hf", batch_size=8, data_parallel_size=2, ray_address=ray_cluster.address)
    engine = make_engine(cfg, TINY_MODEL, dtype="float32")
    try:
        spread = generate_sharded(engine, requests(32), SAMPLING, tmp_path / "ray", shard_size=8)
        nodes = {w.where["node"] for w in engine.pool.workers}
    finally:
        engine.close()
    assert len(nodes) == 2
    one = make_engine(EngineConfig(kind="hf", batch_size=8), TINY_MODEL, dtype="float32")
    assert spread == generate_sharded(one, requests(32), SAMPLING, tmp_path / "one", shard_size=8)
    assert same_files(tmp_path / "ray", tmp_path / "one")


@pytest.mark.slow
def test_ray_reward_model_copies_score_like_one(ray_cluster, tmp_path):
    path = build_reward_model(tmp_path / "rm")
    cfg = ScorerConfig(kind="reward_model", path=str(path), batch_size=2, data_parallel_size=2)
    spread = make_scorer(cfg, device="cpu", ray_address=ray_cluster.address)
    try:
        scores = spread.score(PROMPTS, RESPONSES)
    finally:
        spread.close()
    one = make_scorer(cfg.model_copy(update={"data_parallel_size": 1}), device="cpu")
    assert scores == one.score(PROMPTS, RESPONSES)


# ---- scoring -------------------------------------------------------------------------------


def test_reward_model_on_two_processes_gives_the_scores_of_one(tmp_path):
    path = build_reward_model(tmp_path / "rm")
    cfg = ScorerConfig(kind="reward_model", path=str(path), batch_size=2)
    one = make_scorer(cfg, device="cpu")
    two = make_scorer(cfg.model_copy(update={"data_parallel_size": 2}), device="cpu")
    try:
        assert two.workers is not None and one.workers is None
        prompts, responses = PROMPTS * 3, RESPONSES * 3
        assert two.score(prompts, responses) == one.score(prompts, responses)
        assert len({w.pid for w in two.workers.pool.workers}) == 2
        assert two.model is None  # this process only tokenized
    finally:
        two.close()


def test_pairrm_on_two_processes_gives_the_gaps_of_one(tmp_path):
    from synpo.scoring.pairwise import _import_blender

    try:
        _import_blender()
    except UserError:
        pytest.skip("llm-blender is not installed (pip install -e '.[pairrm]')")
    path = build_tiny_pairrm(tmp_path)
    cfg = ScorerConfig(kind="pairwise", path=str(path), batch_size=2)
    one = make_scorer(cfg, device="cpu")
    two = make_scorer(cfg.model_copy(update={"data_parallel_size": 2}), device="cpu")
    prompts, a, b = PROMPTS * 2, RESPONSES * 2, RESPONSES[::-1] * 2
    try:
        assert score_gaps(two, prompts, a, b) == score_gaps(one, prompts, a, b)
        groups = [RESPONSES[:3], RESPONSES[3:]] * 3
        assert score_groups(two, PROMPTS, groups) == score_groups(one, PROMPTS, groups)
    finally:
        two.close()


def test_scoring_blocks_are_whole_batches_in_order():
    from synpo.scoring.parallel import row_blocks

    blocks = row_blocks(100, 16, 2)
    assert [i for b in blocks for i in b] == list(range(100))
    assert all(len(b) % 16 == 0 for b in blocks[:-1]) and len(blocks) == 7  # 7 batches, ~4 blocks per worker


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# ---- shards cut to the workers ---------------------------------------------------------------


def test_balanced_jobs_fill_every_worker_in_every_wave():
    from synpo.engines.parallel import balanced_jobs

    one_shard = balanced_jobs([805], 8, 2048)  # AlpacaEval: one shard, eight GPUs
    assert len(one_shard) == 8 and {len(j) for j in one_shard} == {100, 101}
    nine = balanced_jobs([2048] * 8 + [1616], 8, 2048)  # 18k seed prompts: nine shards
    assert len(nine) == 16 and {len(j) for j in nine} == {1125}  # two full waves, not a ninth shard alone
    assert [x for j in nine for x in j] == [(k, i) for k, n in enumerate([2048] * 8 + [1616]) for i in range(n)]
    assert max(len(j) for j in balanced_jobs([300] * 5, 2, 300)) <= 300
    assert balanced_jobs([3], 8, 2048) == [[(0, 0)], [(0, 1)], [(0, 2)]]


class _SeedEchoPool:
    """A pool of `size` vLLM workers, run one job at a time here: each answer is its request's seed."""

    def __init__(self, size):
        self.size, self.jobs = size, []

    def __len__(self):
        return self.size

    def run_jobs(self, jobs, method, args_of, done):
        from synpo.engines.vllm_worker import request_seed

        for job in jobs:
            rows, sampling = args_of(job)
            self.jobs.append(len(rows))
            done(job, [{"id": r["id"], "texts": [str(r["seed"] if r.get("seed") is not None else
                                                     request_seed(sampling["seed"], i))],
                        "finish_reasons": ["stop"], "num_tokens": [1], "top_logprobs": None}
                       for i, r in enumerate(rows)])
        return []


def test_one_shard_is_cut_across_the_workers_with_the_seeds_one_engine_uses(tmp_path):
    """One engine seeds request j of shard i with request_seed(shard i's seed, j); eight workers given
    pieces of the shard use the same seeds, so they write the shard files one engine writes."""
    from synpo.engines.base import Completion
    from synpo.engines.vllm_worker import request_seed

    class OneEngine:
        name = "vllm"

        def generate(self, requests, sampling):
            return [Completion(r.id, [str(request_seed(sampling.seed, i))], ["stop"], [1])
                    for i, r in enumerate(requests)]

    reqs = [Request(f"q{i}", [{"role": "user", "content": str(i)}]) for i in range(50)]
    sampling = Sampling(temperature=1.0, seed=7)
    generate_sharded(OneEngine(), reqs, sampling, tmp_path / "one", shard_size=32)
    parallel = DataParallelEngine(EngineConfig(kind="vllm", data_parallel_size=8), "m", {})
    parallel.pool = _SeedEchoPool(8)
    generate_sharded(parallel, reqs, sampling, tmp_path / "eight", shard_size=32)
    assert parallel.pool.jobs == [7, 7, 6, 6, 6, 6, 6, 6]  # two shards (32 + 18) as eight jobs
    assert same_files(tmp_path / "one", tmp_path / "eight")
