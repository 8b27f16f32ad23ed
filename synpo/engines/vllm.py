"""The vLLM engine: offline `LLM.generate`, in this process or in vLLM's own environment.

vLLM pins torch/transformers versions synpo does not use, so it normally lives in a separate
venv (scripts/setup_vllm_env.sh). Where the engine runs:
- `engine.python` unset and vllm importable here: in-process, through `Generator` from
  vllm_worker.py.
- `engine.python: /path/to/venv/bin/python`: a child process running vllm_worker.py (a
  self-contained file; synpo need not be installed there). It loads the model once per
  stage, serves one job per shard (requests in, completion JSONL out) and exits when the
  stage closes the engine, which returns all of its GPU memory before training starts. It
  runs under a keeper (synpo.processes) that ends its whole tree, vLLM's engine core included, when
  synpo dies or closes it, so a killed run leaves no GPU holder behind.
Both paths share the worker's code: chat-template rendering to token ids, SamplingParams
with a seed per request, LoRA adapters through LoRARequest, prefix caching.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path

from synpo.engines.base import Completion, Request, Sampling
from synpo.errors import UserError
from synpo.recipe import EngineConfig

WORKER = Path(__file__).with_name("vllm_worker.py")


class VLLMEngine:
    name = "vllm"

    def __init__(self, model: str, *, adapter: str | None = None, cfg: EngineConfig, dtype: str = "auto",
                 trust_remote_code: bool = False, seed: int = 0, chat_template: str | None = None):
        options = dict(model=model, adapter=adapter, dtype=dtype, seed=seed, chat_template=chat_template,
                       tensor_parallel_size=cfg.tensor_parallel_size,
                       gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=cfg.max_model_len,
                       trust_remote_code=trust_remote_code)
        self._max_model_len = cfg.max_model_len
        self._generator = self._worker = None
        if cfg.python:
            self.mode = "child"
            self._worker = WorkerProcess(cfg.python, options)
        elif importlib.util.find_spec("vllm") is not None:
            from synpo.engines.vllm_worker import Generator

            self.mode = "in-process"
            self._generator = Generator(**options)
        else:
            raise UserError("engine.kind vllm: vllm is not installed in this environment; set engine.python to the "
                            "python of a vLLM environment (scripts/setup_vllm_env.sh builds .venv-vllm)")

    def render(self, request: Request) -> list[int]:
        """The prompt's token ids as vLLM receives them (rendered on the vLLM side)."""
        if self._worker:
            return self._worker.call(op="render", messages=request.messages)["ids"]
        return self._generator.render(request.messages)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        if not requests:
            return []
        rows = [{"id": r.id, "messages": r.messages, **({"seed": r.seed} if r.seed is not None else {})}
                for r in requests]
        out = self._worker.generate(rows, asdict(sampling)) if self._worker else \
            self._generator.generate(rows, asdict(sampling))
        if [r["id"] for r in out] != [r.id for r in requests]:
            raise RuntimeError("vLLM worker returned completions for other requests")
        report_context(out, sampling.max_new_tokens, self._max_model_len)
        return [Completion(**{k: v for k, v in r.items() if k not in ("prompt_tokens", "capped")}) for r in out]

    def close(self) -> None:
        if self._worker:
            self._worker.close()
            self._worker = None
        if self._generator:
            self._generator.close()
            self._generator = None


def report_context(rows: list[dict], max_new_tokens: int, max_model_len: int | None) -> None:
    """Log the requests the context did not hold: prompts that fill it (not generated, finish
    reason prompt_too_long, so their rows drop as empty) and answers given less than max_new_tokens."""
    from synpo.progress import log

    limit = f"engine.max_model_len={max_model_len}" if max_model_len else "the model's context length"
    too_long = sum(r["finish_reasons"][:1] == ["prompt_too_long"] for r in rows)
    capped = sum(bool(r.get("capped")) for r in rows)
    if too_long:
        longest = max(r["prompt_tokens"] for r in rows)
        log(f"[yellow]vllm[/yellow]: {too_long} of {len(rows)} prompts fill {limit} (the longest {longest} tokens) "
            "and were not generated; their rows are dropped")
    if capped:
        log(f"[yellow]vllm[/yellow]: {capped} of {len(rows)} prompts leave less than max_new_tokens={max_new_tokens} "
            f"within {limit}: those answers were capped; raise engine.max_model_len")


class WorkerProcess:
    """vllm_worker.py in a child process, spoken to one JSON line at a time."""

    def __init__(self, python: str, options: dict):
        from synpo.processes import popen_kept
        from synpo.progress import log, quiet

        if not Path(python).exists():
            raise UserError(f"engine.python: file does not exist: {python}")
        self._quiet = quiet()
        self._dir = Path(tempfile.mkdtemp(prefix="synpo-vllm-"))
        self._jobs = 0
        # synpo's PYTHONPATH has no business in vLLM's environment. PR_SET_PDEATHSIG fires when the
        # *thread* that started the worker ends: start engines from the thread that uses them.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        # Under a keeper (synpo.processes): vLLM's engine core, a grandchild on the GPU, ends with it.
        self._proc = popen_kept([python, str(WORKER), json.dumps(options)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._tail: collections.deque[str] = collections.deque(maxlen=30)
        self._stderr = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr.start()
        try:
            ready = self._receive()
        except (RuntimeError, KeyboardInterrupt) as e:
            from synpo.processes import stop

            stop(self._proc)
            self.close()
            if "No module named 'vllm'" in str(e):
                raise UserError(f"engine.python: {python} cannot import vllm; build a vLLM environment with "
                                "scripts/setup_vllm_env.sh and point engine.python at its bin/python") from None
            raise
        log(f"vLLM {ready['vllm']} worker ready on {ready['device']} (pid {self._proc.pid}, {python})")

    def _pump_stderr(self) -> None:
        """Keep the worker's log tail for error messages; show it unless synpo is quiet."""
        for line in self._proc.stderr:
            self._tail.append(line.rstrip())
            if not self._quiet:
                sys.stderr.write(line)

    def _receive(self) -> dict:
        line = self._proc.stdout.readline()
        while line and not line.startswith("{"):  # something printed before the worker took stdout over
            self._tail.append(line.rstrip())
            line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            self._stderr.join(timeout=5)
            raise RuntimeError(f"vLLM worker exited (code {code}); its last lines:\n" + "\n".join(self._tail))
        message = json.loads(line)
        if not message.get("ok"):
            raise RuntimeError(f"vLLM worker: {message.get('error')}")
        return message

    def call(self, **job) -> dict:
        if self._proc.poll() is not None:
            return self._receive()  # raises with the worker's last lines
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        return self._receive()

    def generate(self, rows: list[dict], sampling: dict) -> list[dict]:
        self._jobs += 1
        requests, output = self._dir / f"requests-{self._jobs}.jsonl", self._dir / f"completions-{self._jobs}.jsonl"
        requests.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        self.call(op="generate", requests=str(requests), output=str(output), sampling=sampling)
        with open(output, encoding="utf-8") as f:
            out = [json.loads(line) for line in f if line.strip()]
        requests.unlink()
        output.unlink()
        return out

    def close(self) -> None:
        """Ask the worker to exit (it frees the model), and make sure it has."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                from synpo.processes import stop

                stop(self._proc)  # the keeper ends the engine core too
        self._stderr.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)
