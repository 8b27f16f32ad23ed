"""Data-parallel scoring: copies of the reward model or PairRM, one per GPU (or Ray actor).

`scorer.data_parallel_size` copies (default: every visible GPU; 1 on a CPU) run as synpo.parallel
workers; with the recipe's `engine.ray_address` they are Ray actors of one GPU each. The work
is split so that every batch is the batch one copy would have formed:
- reward model: this process renders and length-sorts all conversations and cuts the batches
  exactly as one scorer does; each job is one batch of token ids, scored by whichever copy is free.
- PairRM: llm-blender batches rows in order, so jobs are runs of whole batches (a multiple of
  `scorer.batch_size` rows), concatenated back in order.
So N copies give the scores one copy gives (bit for bit where the kernels give a batch the same
result on any device of the same kind). A copy that dies fails the scoring stage, which then
reruns whole (scores are not kept per batch).
"""

from __future__ import annotations

from synpo.recipe import ScorerConfig


def wants_workers(cfg: ScorerConfig, device: str, ray_address: str | None) -> bool:
    if cfg.kind not in ("reward_model", "pairwise"):
        return False
    if ray_address or (cfg.data_parallel_size or 1) > 1:
        return True
    if cfg.data_parallel_size is None and device != "cpu":
        from synpo.parallel import visible_gpus

        return len(visible_gpus()) > 1
    return False


class ScoringWorkers:
    """Started on the first call, closed with the scorer (the GPUs go back between stages)."""

    def __init__(self, cfg: ScorerConfig, device: str, ray_address: str | None):
        self.cfg, self.device, self.ray_address = cfg, device, ray_address
        self.pool = None

    def _pool(self):
        if self.pool is None:
            from synpo.parallel import Pool, Spec

            spec = Spec("synpo.scoring.server:ScorerServer", [self.cfg.model_dump(mode="json"), self.device])
            self.pool = Pool(spec, count=self.cfg.data_parallel_size, gpus_per_worker=1,
                             ray_address=self.ray_address, field_name="scorer.data_parallel_size")
        return self.pool

    def __len__(self) -> int:
        return len(self._pool())

    def map(self, method: str, jobs: list[tuple], done=None) -> list:
        """method(*job) for every job, on whichever copy is free; results in job order."""
        pool = self._pool()
        results: list = [None] * len(jobs)

        def finished(k: int, result) -> None:
            results[k] = result
            if done:
                done(k, result)

        failures = pool.run_jobs(list(range(len(jobs))), method, lambda k: jobs[k], finished)
        if failures:
            label, k, error = failures[0]
            raise RuntimeError(f"scoring: {label} failed on job {k} of {len(jobs)}; rerun to score again: {error}")
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def row_blocks(n: int, batch_size: int, workers: int) -> list[range]:
    """Runs of whole batches covering n rows: about four per worker, so a slow copy holds up little."""
    batches = -(-n // batch_size)
    per_block = max(1, -(-batches // (4 * max(workers, 1))))
    step = per_block * batch_size
    return [range(start, min(start + step, n)) for start in range(0, n, step)]
