"""Child processes (training jobs, vLLM and server workers, data-parallel engines) that end with synpo,
their whole process tree included, and whose output goes to a log file.

A parent-death signal reaches only a direct child. But `accelerate launch` starts its ranks in new
sessions, and vLLM's engine core is a grandchild holding the GPU: killed with synpo's direct child
alone they would train on, hold the GPU (the rerun OOMs) and may later write the same output. So
every child synpo starts runs under a *keeper* (`python -m synpo.processes -- CMD...`, stdlib only):

- the keeper is a child subreaper (PR_SET_CHILD_SUBREAPER), so every process below it, even one
  that started a new session or whose parent died, stays its descendant;
- it gets SIGTERM when synpo dies (PR_SET_PDEATHSIG) and is sent SIGTERM when synpo stops it
  (`stop`): it then ends its whole tree (SIGTERM, then SIGKILL after a grace period) and exits;
- when the command exits, whatever it left running is ended too: a stage's processes end with it.

The keeper passes stdin, stdout and stderr through untouched (it never reads them) and exits with
the command's exit code. It starts its own session, so a terminal's Ctrl-C reaches synpo, which
stops its children itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL for the processes of a stopped tree


def _prctl(option: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)
    except OSError:  # not Linux: no parent-death signal, no subreaper
        pass


def die_with_parent() -> None:
    """Child processes die when synpo dies (Linux), so a killed run leaves no writer behind."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _term_with_parent() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the keeper catches it and ends its tree


def kept(cmd: list[str]) -> list[str]:
    """`cmd` run under a keeper (see the module docstring), with synpo's own Python."""
    return [sys.executable, "-m", "synpo.processes", str(os.getpid()), "--", *cmd]


def popen_kept(cmd: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen of `cmd` under a keeper: it and everything it starts end with synpo."""
    return subprocess.Popen(kept(cmd), preexec_fn=_term_with_parent, start_new_session=True, **kwargs)


def stop(proc: subprocess.Popen, grace: float = GRACE_SECONDS + 5.0) -> None:
    """End a kept process and its tree: SIGTERM (the keeper ends the tree), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def descendants(root: int) -> list[int]:
    """Every process below `root`, by the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_tree(root: int, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every process below `root`, SIGKILL what is left after `grace` seconds; reap them."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in descendants(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap()
            if not descendants(root):
                return
            time.sleep(0.05)


class _Stop(Exception):
    pass


def keep(parent: int, cmd: list[str]) -> int:
    """The keeper's main: run `cmd`, end its whole tree when it exits or when synpo goes."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _term_with_parent()
    if os.getppid() != parent:  # synpo died before the signal was armed
        return 1

    def on_signal(signum, frame):
        raise _Stop(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    code = 1
    try:
        child = subprocess.Popen(cmd, preexec_fn=die_with_parent)  # a SIGKILLed keeper still takes its child
        while True:
            pid, status = os.waitpid(-1, 0)  # reaps orphans handed to this subreaper as well
            if pid == child.pid:
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
                break
    except _Stop as e:
        code = 128 + e.args[0]
    except (ChildProcessError, OSError) as e:
        print(f"synpo keeper: {cmd[0]}: {e}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ending the tree is not to be cut short
        end_tree(os.getpid())
    return code


def run_child(cmd: list[str], log_path: Path, env: dict | None = None) -> None:
    """Run a child process (under a keeper), teeing its output to log_path; raise on failure with the
    log's tail. Interrupted (Ctrl-C), it ends the child's whole tree before passing the interrupt on."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        proc = popen_kept(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            for line in proc.stdout:
                log_file.write(line)
                if os.environ.get("SYNPO_QUIET") != "1":
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()
            code = proc.wait()
        except BaseException:
            stop(proc)
            raise
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {code}); log: {log_path}\n" + "\n".join(tail))


if __name__ == "__main__":
    # python -m synpo.processes SYNPO_PID -- CMD...
    sys.exit(keep(int(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]))
