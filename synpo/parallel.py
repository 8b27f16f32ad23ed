"""Workers side by side: N copies of one object (an engine, a scorer), each on its own GPUs.

A worker is a child process (`python -m synpo.parallel`) or, with a Ray address, a Ray actor.
Either way it builds its object once from a spec (an importable factory and its JSON
arguments) and then answers calls `method(*args)` with JSON results. `run_jobs` hands a list of
jobs out to the workers, each worker taking the next job when it finishes one, so a fast
worker takes more and a dead one takes no more. The callers (synpo/engines/parallel.py,
synpo/scoring/parallel.py) make every job's result independent of which worker ran it.

Placement:
- local: worker k sees GPUs groups[k] (its own CUDA_VISIBLE_DEVICES) and `threads` torch
  threads; on a CPU the groups are empty and each worker gets one thread.
- Ray: one placement group with a bundle of {GPU: gpus_per_worker, CPU: 1} per worker (on a CPU
  cluster {CPU: 1}); actor k is scheduled into bundle k. Ray sets each actor's
  CUDA_VISIBLE_DEVICES to its bundle's GPUs. synpo and the models must be reachable from every
  node (the same environment and paths).

Child processes die with their parent (PR_SET_PDEATHSIG); a dead worker is reported with its
exit code and its last lines of stderr.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from synpo.errors import UserError


class WorkerFailed(RuntimeError):
    """A worker died or its call raised; `user_error` when it raised synpo's UserError."""

    def __init__(self, message: str, user_error: bool = False):
        super().__init__(message)
        self.user_error = user_error


@dataclass
class Spec:
    """What a worker serves: factory(*args, **kwargs), factory given as "module:callable"."""

    factory: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)

    def build(self):
        module, name = self.factory.split(":")
        return getattr(importlib.import_module(module), name)(*self.args, **self.kwargs)


# ---- placement ---------------------------------------------------------------------------


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_groups(requested: int | None, per_worker: int, field_name: str) -> list[list[str]]:
    """One GPU group per worker: `requested` workers (default: as many as the visible GPUs fill),
    each of `per_worker` GPUs; on a CPU, `requested` (default 1) empty groups."""
    gpus = visible_gpus()
    if not gpus:
        return [[] for _ in range(requested or 1)]
    count = requested or max(1, len(gpus) // per_worker)
    if count * per_worker > len(gpus):
        raise UserError(f"{field_name}: {count} workers x {per_worker} GPU(s) each need {count * per_worker} GPUs; "
                        f"{len(gpus)} visible (CUDA_VISIBLE_DEVICES={','.join(gpus)}); lower {field_name}")
    return [gpus[k * per_worker : (k + 1) * per_worker] for k in range(count)]


# ---- local workers -------------------------------------------------------------------------


class LocalWorker:
    """One child process serving a Spec; `call` blocks until it answers."""

    def __init__(self, spec: Spec, index: int, gpus: list[str], threads: int):
        from synpo.processes import popen_kept
        from synpo.progress import quiet

        self.index, self.gpus = index, gpus
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SYNPO_WORKER_THREADS": str(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        self._quiet = quiet()
        self._tail: collections.deque[str] = collections.deque(maxlen=30)
        self._proc = popen_kept([sys.executable, "-m", "synpo.parallel"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._stderr = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr.start()
        self._send({"factory": spec.factory, "args": spec.args, "kwargs": spec.kwargs})

    @property
    def label(self) -> str:
        where = f"GPUs {','.join(self.gpus)}" if self.gpus else "CPU"
        return f"worker {self.index} (pid {self._proc.pid}, {where})"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _pump_stderr(self) -> None:
        for line in self._proc.stderr:
            self._tail.append(line.rstrip())
            if not self._quiet:
                sys.stderr.write(f"[worker {self.index}] {line}")

    def _send(self, message: dict) -> None:
        try:
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker is gone: _receive reports how it ended

    def _receive(self):
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            self._stderr.join(timeout=5)
            raise WorkerFailed(f"{self.label} exited (code {code}); its last lines:\n" + "\n".join(self._tail))
        message = json.loads(line)
        if not message["ok"]:
            raise WorkerFailed(f"{self.label}: {message['error']}", user_error=message.get("user_error", False))
        return message.get("result")

    def ready(self) -> None:
        self._receive()

    def call(self, method: str, *args):
        self._send({"method": method, "args": list(args)})
        return self._receive()

    def kill(self) -> None:
        from synpo.processes import stop

        stop(self._proc)  # the worker's whole tree (its engines' own children included)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._send({"method": "exit"})
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                from synpo.processes import stop

                stop(self._proc)
        self._stderr.join(timeout=5)


def serve() -> int:
    """The worker's side: spec on the first stdin line, then one call per line, one JSON reply each."""
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # stdout carries the protocol only; anything printed goes to stderr

    def reply(**message) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    def failure(e: Exception) -> dict:
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "user_error": isinstance(e, UserError)}

    spec = json.loads(sys.stdin.readline())
    try:
        from synpo.progress import quiet_libraries

        quiet_libraries()
        set_torch_threads()
        served = Spec(**spec).build()
    except Exception as e:  # noqa: BLE001  (reported to the parent, which raises it)
        reply(**failure(e))
        return 1
    reply(ok=True, result={"pid": os.getpid()})
    for line in sys.stdin:
        job = json.loads(line)
        if job["method"] == "exit":
            break
        try:
            reply(ok=True, result=getattr(served, job["method"])(*job["args"]))
        except Exception as e:  # noqa: BLE001
            reply(**failure(e))
    if hasattr(served, "close"):
        served.close()
    sys.stderr.flush()
    channel.close()
    os._exit(0)  # skip the interpreter's slow teardown of torch / vLLM; the OS takes the memory back


def set_torch_threads() -> None:
    threads = os.environ.get("SYNPO_WORKER_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# ---- Ray workers ---------------------------------------------------------------------------


class _RayHost:
    """The Ray actor around a Spec's object (made a remote class in RayWorkers)."""

    def __init__(self, spec: Spec):
        set_torch_threads()
        try:
            self.served = spec.build()
        except UserError as e:  # crosses Ray as a plain error: keep the message and the kind
            raise RuntimeError(f"UserError: {e}") from None

    def where(self) -> dict:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "gpus": ray.get_gpu_ids()}

    def call(self, method: str, args: list):
        return getattr(self.served, method)(*args)

    def close(self) -> None:
        if hasattr(self.served, "close"):
            self.served.close()


class RayWorker:
    def __init__(self, actor, index: int):
        self.actor, self.index = actor, index
        self.where: dict = {}

    @property
    def label(self) -> str:
        node = self.where.get("node", "?")[:8]
        return f"Ray worker {self.index} (node {node}, pid {self.where.get('pid', '?')})"

    def ready(self) -> None:
        self.where = self._get(self.actor.where.remote())

    def call(self, method: str, *args):
        return self._get(self.actor.call.remote(method, list(args)))

    def _get(self, ref):
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as e:
            text = str(e)
            raise WorkerFailed(f"{self.label}: {text.splitlines()[0] if text else type(e).__name__}",
                               user_error="UserError:" in text) from None
        except ray.exceptions.RayTaskError as e:
            raise WorkerFailed(f"{self.label}: {str(e.cause) if e.cause else e}") from None

    def kill(self) -> None:
        import ray

        ray.kill(self.actor)

    def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):  # a dead actor has nothing left to close
            ray.get(self.actor.close.remote(), timeout=120)
        ray.kill(self.actor)


def start_ray_workers(spec: Spec, address: str, count: int | None, gpus_per_worker: int, field_name: str):
    """Actors in one placement group: a bundle of gpus_per_worker GPUs (or one CPU) per actor."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from synpo.progress import quiet

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=not quiet())
    cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
    count = count or max(1, cluster_gpus // gpus_per_worker)
    per_worker = gpus_per_worker if cluster_gpus else 0
    if per_worker and count * per_worker > cluster_gpus:
        raise UserError(f"{field_name}: {count} workers x {per_worker} GPU(s) each need {count * per_worker} "
                        f"GPUs; the Ray cluster at {address} has {cluster_gpus}")
    bundle = {"GPU": per_worker, "CPU": 1} if per_worker else {"CPU": 1}
    group = placement_group([bundle] * count, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=600)
    except Exception:
        remove_placement_group(group)
        raise UserError(f"{field_name}: the Ray cluster at {address} has no room for {count} x {bundle} "
                        "within 10 minutes") from None
    threads = 1 if not per_worker else max(1, int(ray.cluster_resources().get("CPU", 1)) // max(count, 1))
    host = ray.remote(_RayHost)
    workers = [RayWorker(host.options(num_cpus=1, num_gpus=per_worker, runtime_env={"env_vars": {
        "OMP_NUM_THREADS": str(threads), "SYNPO_WORKER_THREADS": str(threads)}},
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=k))
        .remote(spec), k) for k in range(count)]
    return workers, lambda: remove_placement_group(group)


# ---- the pool ------------------------------------------------------------------------------


class Pool:
    """N workers serving one Spec, started together (each loads its model in parallel)."""

    def __init__(self, spec: Spec, *, count: int | None, gpus_per_worker: int, ray_address: str | None,
                 field_name: str):
        from synpo.progress import log

        self._release: Callable[[], None] | None = None
        if ray_address:
            self.workers, self._release = start_ray_workers(spec, ray_address, count, gpus_per_worker, field_name)
        else:
            groups = gpu_groups(count, gpus_per_worker, field_name)
            threads = 1 if not groups[0] else max(1, (os.cpu_count() or 1) // len(groups))
            self.workers = [LocalWorker(spec, k, g, threads) for k, g in enumerate(groups)]
        try:
            for w in self.workers:
                w.ready()
        except WorkerFailed as e:
            self.close(kill=True)  # the others may still be loading: no need to wait for them
            if e.user_error:
                raise UserError(str(e).split("UserError: ", 1)[-1]) from None
            raise
        log(f"{len(self.workers)} workers ready: " + "; ".join(w.label for w in self.workers))

    def __len__(self) -> int:
        return len(self.workers)

    def run_jobs(self, jobs: list, method: str, args_of: Callable, done: Callable) -> list[tuple]:
        """Call `method(*args_of(job))` for every job, on whichever worker is free; `done(job, result)`
        is called (one at a time) as each finishes. A worker whose call fails takes no more jobs.
        Returns (worker label, job, error) of the failed calls; jobs no live worker took are left."""
        pending: queue.SimpleQueue = queue.SimpleQueue()
        for job in jobs:
            pending.put(job)
        lock = threading.Lock()
        failures: list[tuple] = []

        def work(worker) -> None:
            while True:
                try:
                    job = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    result = worker.call(method, *args_of(job))
                    with lock:
                        done(job, result)
                except Exception as e:  # noqa: BLE001  (reported with the others when every worker is done)
                    with lock:
                        failures.append((worker.label, job, e if isinstance(e, WorkerFailed) else WorkerFailed(
                            f"{type(e).__name__}: {e}")))
                    return

        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in self.workers]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.5)
        except KeyboardInterrupt:
            self.close(kill=True)  # do not wait for the calls in flight
            raise
        return failures

    def call_one(self, method: str, *args):
        """One call on the first worker (a plain `generate` that is not a sharded stage)."""
        return self.workers[0].call(method, *args)

    def close(self, kill: bool = False) -> None:
        for w in self.workers:
            w.kill() if kill else w.close()
        if self._release:
            self._release()
            self._release = None
        self.workers = []


if __name__ == "__main__":
    sys.exit(serve())
