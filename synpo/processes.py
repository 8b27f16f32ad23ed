"""Child processes (training jobs, vLLM and server workers, data-parallel engines) that die with synpo
and whose output goes to a log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def die_with_parent() -> None:
    """Child processes die when synpo dies (Linux), so a killed run leaves no writer behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_child(cmd: list[str], log_path: Path, env: dict | None = None) -> None:
    """Run a child process, teeing its output to log_path; raise on failure with the log's tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, preexec_fn=die_with_parent)
        for line in proc.stdout:
            log_file.write(line)
            if os.environ.get("SYNPO_QUIET") != "1":
                sys.stderr.buffer.write(line)
                sys.stderr.flush()
        code = proc.wait()
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {code}); log: {log_path}\n" + "\n".join(tail))
