"""A loopback OpenAI-compatible server (`transformers serve`) for the `openai` engine's tests,
the generation benchmark and CPU experiments.

`transformers serve` (transformers[serving]) loads whichever local model directory a request
names in its `model` field, so one server serves every stage's model by path. Good to know:
it ignores `n` and `logprobs`, and samples only when a request carries
`generation_config: '{"do_sample": true}'` (engine.extra_body); temperature alone does not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """`with LocalServer() as server:` ... `server.base_url`; `kill()` / `start()` to crash and restart it."""

    def __init__(self, port: int | None = None, log_path: str | Path | None = None, threads: int = 1):
        self.port = port or free_port()
        self._scratch = tempfile.TemporaryDirectory(prefix="synpo-serve-")
        self.log_path = Path(log_path or Path(self._scratch.name) / "server.log")
        self.threads = threads
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 180) -> LocalServer:
        import httpx

        from synpo.processes import die_with_parent

        hub_cache = Path(self._scratch.name) / "hub"  # must exist; nothing is ever downloaded into it
        hub_cache.mkdir(exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache),
               "OMP_NUM_THREADS": str(self.threads)}
        cmd = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
               "serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          preexec_fn=die_with_parent)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited (code {self._proc.returncode}); log: {self.log_path}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"transformers serve not ready after {timeout:g} s; log: {self.log_path}")

    def requests_received(self) -> int:
        """Chat requests the server has received over its life (restarts included), from its log."""
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("[Request received]")

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to open connections."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._scratch.cleanup()
