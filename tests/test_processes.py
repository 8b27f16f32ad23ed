"""Every process a stage starts ends with it, and with synpo: a killed run leaves nothing running.

The processes of a run are looked up by session (synpo is started in a session of its own here, so
everything that does not start a session of its own is in it) and, for those that do (accelerate's
ranks, vLLM's engine core), by a marker in their environment, which every descendant inherits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import MINI, TINY_RECIPE, child_env

MARKER = "SYNPO_TEST_PROCESS_TREE"


def run_processes(marker: str, session: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in `session` or whose environment holds the marker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            fields = stat[stat.rindex(b")") + 2:].split()
            if fields[0] == b"Z":
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session or f"{MARKER}={marker}".encode() in environ.split(b"\0"):
            found.append((int(entry), cmdline))
    return found


def wait_for(condition, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


def start(cmd: list[str], marker: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, env={**child_env(), MARKER: marker}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)


def kill_leftovers(marker: str, session: int) -> None:
    for pid, _ in run_processes(marker, session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


PARENT = """
import subprocess, sys, time
from synpo.processes import popen_kept
# a grandchild that leaves the keeper's session, as accelerate's ranks do, and one that stays
popen_kept(["sh", "-c", "setsid sleep 120 & sleep 120"])
time.sleep(120)
"""


def test_a_sigkilled_parent_takes_its_childrens_whole_tree_with_it():
    marker = uuid.uuid4().hex
    parent = start([sys.executable, "-c", PARENT], marker)
    try:
        assert wait_for(lambda: sum(c.strip() == "sleep 120" for _, c in run_processes(marker, parent.pid)) == 2, 30)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        left = wait_for(lambda: not run_processes(marker, parent.pid), 10) or run_processes(marker, parent.pid)
        assert left is True, left
    finally:
        kill_leftovers(marker, parent.pid)


def test_a_command_that_exits_ends_what_it_left_running():
    from synpo.processes import popen_kept

    marker = uuid.uuid4().hex
    proc = popen_kept(["sh", "-c", "setsid sleep 120 & exit 3"], env={**os.environ, MARKER: marker})
    try:
        assert proc.wait(timeout=20) == 3
        assert not run_processes(marker, -1)  # the orphan in its own session ended with the stage
    finally:
        kill_leftovers(marker, -1)


def sigkill_then_nothing_left(synpo: subprocess.Popen, marker: str) -> None:
    """SIGKILL synpo; within 10 s no process of its run (by session or marker) may be left."""
    os.kill(synpo.pid, signal.SIGKILL)
    synpo.wait()
    left = wait_for(lambda: not run_processes(marker, synpo.pid), 10) or run_processes(marker, synpo.pid)
    assert left is True, left


@pytest.mark.slow
def test_sigkill_of_synpo_during_a_two_process_training_stage_leaves_no_process(tmp_path):
    marker = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "synpo.iterate", str(TINY_RECIPE), "--run-dir", str(tmp_path / "run")]
    for o in [*MINI, "eval.limit=8", "prompt_generator.train.num_processes=2",
              "prompt_generator.train.max_steps=400"]:
        cmd += ["--set", o]
    synpo = start(cmd, marker)
    try:
        def ranks():
            return [p for p, c in run_processes(marker, synpo.pid) if "synpo.training.launch" in c
                    and "accelerate" not in c]

        assert len(wait_for(lambda: len(ranks()) >= 2 and ranks(), 240, step=0.5) or []) >= 2, \
            run_processes(marker, synpo.pid)
        assert synpo.poll() is None
        sigkill_then_nothing_left(synpo, marker)
    finally:
        kill_leftovers(marker, synpo.pid)


VLLM_STAGE = """
import sys, time
from synpo.engines.base import Request, Sampling
from synpo.engines.vllm import VLLMEngine
from synpo.recipe import EngineConfig
engine = VLLMEngine(sys.argv[1], cfg=EngineConfig(kind="vllm", python=sys.argv[2]), dtype="float32")
engine.generate([Request("a", [{"role": "user", "content": "Sort: 2 1"}])], Sampling(max_new_tokens=4))
print("generating", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_sigkill_of_synpo_during_a_vllm_generation_stage_leaves_no_process():
    """vLLM's engine core is a grandchild of synpo (synpo -> keeper -> vllm_worker.py -> EngineCore)."""
    from test_engines import vllm_python

    from synpo.toy import TINY_MODEL

    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM environment (scripts/setup_vllm_env.sh, or SYNPO_VLLM_PYTHON)")
    marker = uuid.uuid4().hex
    # vLLM's engine core in a process of its own, as on GPUs (synpo's CPU default keeps it in the worker)
    env = {**child_env(), MARKER: marker, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    synpo = subprocess.Popen([sys.executable, "-c", VLLM_STAGE, str(TINY_MODEL), python], env=env,
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert synpo.stdout.readline().strip() == "generating"
        tree = run_processes(marker, synpo.pid)
        assert any("vllm_worker.py" in c for _, c in tree) and len(tree) >= 4, tree  # + engine core, keeper
        sigkill_then_nothing_left(synpo, marker)
    finally:
        kill_leftovers(marker, synpo.pid)
