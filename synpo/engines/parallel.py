"""Data-parallel generation: N engines side by side, each taking shards from the stage's shard list.

`make_engine` returns a DataParallelEngine when `engine.data_parallel_size` resolves to more
than one worker (by default every visible GPU divided by `tensor_parallel_size`; 1 on a CPU)
or `engine.ray_address` is set. Its workers (synpo.parallel: child processes, or Ray actors)
each build the recipe's engine on their own GPUs (a vLLM worker then starts its vLLM child
there as usual) and are started on the first shard that needs generating, so a resumed stage
whose shards are all on disk loads no model.

`generate_sharded` hands the stage's missing shards to the workers; a worker takes the next
shard when it finishes one. Shard i is always requests[i*shard_size:(i+1)*shard_size], sampled
with `sampling.for_shard(i)`, and written by this process with the same writer as the
one-engine path: N workers write the same files one engine writes, byte for byte, wherever the
engine gives the same completions for the same call (the hf engine at one thread per process;
see docs/gpus.md for GPUs). A worker that dies loses only the shard it was on: the others
finish the list, the stage then stops with an error naming it, and a rerun generates only the
missing shards.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from synpo.engines.base import Completion, Request, Sampling, _read_shard
from synpo.engines.vllm_worker import request_seed
from synpo.io import write_jsonl
from synpo.recipe import EngineConfig

MAKE_ENGINE = "synpo.engines:make_engine"


def wants_workers(cfg: EngineConfig) -> bool:
    """Whether this engine section runs as data-parallel workers rather than one engine in this process."""
    if cfg.kind == "openai":
        return False
    if cfg.ray_address or (cfg.data_parallel_size or 1) > 1:
        return True
    if cfg.data_parallel_size is None:  # the default: every visible GPU
        from synpo.parallel import visible_gpus

        return len(visible_gpus()) // tp_of(cfg) > 1
    return False


def tp_of(cfg: EngineConfig) -> int:
    return cfg.tensor_parallel_size if cfg.kind == "vllm" else 1  # the hf engine runs on one device


class EngineServer:
    """What a worker serves: one engine, with JSON in and out."""

    def __init__(self, cfg: dict, model: str, options: dict, factory: str = MAKE_ENGINE):
        from synpo.parallel import Spec

        one = {**cfg, "data_parallel_size": 1, "ray_address": None}
        self.engine = Spec(factory, [EngineConfig(**one), model], options).build()

    def generate(self, requests: list[dict], sampling: dict) -> list[dict]:
        out = self.engine.generate([Request(**r) for r in requests], Sampling(**sampling))
        return [asdict(c) for c in out]

    def close(self) -> None:
        self.engine.close()


def balanced_jobs(shard_lengths: list[int], workers: int, shard_size: int) -> list[list[tuple[int, int]]]:
    """The requests of the shards to generate (shard k, position j) cut into jobs of nearly equal size,
    in order, as many as fill every worker in each wave: 805 requests on 8 workers are 8 jobs of about
    100 (not one shard of 805 on one worker while seven wait), 18,000 with shard_size 2048 are 16 jobs of
    1,125 (two full waves, not a ninth shard alone in a second one). A job is never larger than a shard."""
    order = [(k, j) for k, n in enumerate(shard_lengths) for j in range(n)]
    if not order:
        return []
    waves = -(-len(order) // (max(workers, 1) * shard_size))
    count = min(len(order), max(workers, 1) * waves)
    size, extra = divmod(len(order), count)
    jobs, start = [], 0
    for c in range(count):
        end = start + size + (c < extra)
        jobs.append(order[start:end])
        start = end
    return jobs


class DataParallelEngine:
    def __init__(self, cfg: EngineConfig, model: str, options: dict, factory: str = MAKE_ENGINE):
        self.cfg, self.model, self.options, self.factory = cfg, str(model), options, factory
        self.name = f"{cfg.kind} data-parallel"
        self.pool = None

    def _workers(self):
        if self.pool is None:
            from synpo.parallel import Pool, Spec

            spec = Spec("synpo.engines.parallel:EngineServer",
                        [self.cfg.model_dump(mode="json"), self.model, self.options, self.factory])
            self.pool = Pool(spec, count=self.cfg.data_parallel_size, gpus_per_worker=tp_of(self.cfg),
                             ray_address=self.cfg.ray_address, field_name="engine.data_parallel_size")
        return self.pool

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        """One call, on one worker: exactly what one engine returns for it."""
        rows = self._workers().call_one("generate", [asdict(r) for r in requests], asdict(sampling))
        return [Completion(**r) for r in rows]

    def generate_sharded(self, requests: list[Request], sampling: Sampling, shard_dir: str | Path,
                         shard_size: int = 256, desc: str = "generate") -> list[Completion]:
        from synpo.progress import log, progress

        shard_dir = Path(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        shards = [requests[i : i + shard_size] for i in range(0, len(requests), shard_size)]
        path = lambda index: shard_dir / f"shard-{index:05d}.jsonl"  # noqa: E731  (as generate_sharded)
        missing = [i for i, shard in enumerate(shards) if _read_shard(path(i), shard) is None]
        started = time.time()
        with progress(desc, total=len(requests), unit="req") as bar:
            bar.advance(len(requests) - sum(len(shards[i]) for i in missing))
            if missing:
                pool = self._workers()
                if self.cfg.kind == "vllm":  # per-request seeds: the work can be cut to fit the workers
                    jobs = balanced_jobs([len(shards[i]) for i in missing], len(pool), shard_size)
                    jobs = [[(missing[k], j) for k, j in job] for job in jobs]
                else:  # the hf engine seeds a whole call: a job is a shard, as one engine runs it
                    jobs = [[(i, j) for j in range(len(shards[i]))] for i in missing]
                rows: dict[int, dict[int, dict]] = {i: {} for i in missing}
                seeds = {i: sampling.for_shard(i) for i in missing}

                def args_of(k: int):
                    job = jobs[k]
                    if self.cfg.kind != "vllm":
                        return [asdict(r) for r in shards[job[0][0]]], asdict(seeds[job[0][0]])
                    return ([{**asdict(shards[i][j]), "seed": request_seed(seeds[i].seed, j)} for i, j in job],
                            asdict(sampling))

                def done(k: int, result: list[dict]) -> None:
                    job = jobs[k]
                    if [r["id"] for r in result] != [shards[i][j].id for i, j in job]:
                        raise RuntimeError(f"job {k}: a worker returned completions for other requests")
                    for (i, j), row in zip(job, result):
                        rows[i][j] = row
                    for i in sorted({i for i, _ in job}):
                        if len(rows[i]) == len(shards[i]) and not path(i).exists():
                            write_jsonl(path(i), [rows[i][j] for j in range(len(shards[i]))])
                    bar.advance(len(job))

                failures = pool.run_jobs(list(range(len(jobs))), "generate", args_of, done)
                failures = [(label, ", ".join(str(i) for i in sorted({i for i, _ in jobs[k]})), e)
                            for label, k, e in failures]
                self._raise_for(failures, shards, path)
        new = sum(len(shards[i]) for i in missing)
        if new:
            log(f"{desc}: {new} generated on {len(self.pool)} workers ({new / max(time.time() - started, 1e-9):.1f}/s),"
                f" {len(requests) - new} from finished shards")
        return [c for i, shard in enumerate(shards) for c in _read_shard(path(i), shard)]

    @staticmethod
    def _raise_for(failures: list[tuple], shards: list, path) -> None:
        if not failures:
            return
        from synpo.errors import UserError

        left = [i for i in range(len(shards)) if not path(i).exists()]
        first = failures[0][2]
        message = (f"{len(failures)} worker(s) failed: " + "; ".join(f"{label} on shard {job}" for label, job, _ in
                                                                     failures)
                   + f". {len(shards) - len(left)} of {len(shards)} shards are finished and kept; run the same "
                   f"command again to generate the {len(left)} missing. First error: {first}")
        if first.user_error:
            raise UserError(message)
        raise RuntimeError(message)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

