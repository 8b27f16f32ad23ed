"""Log lines and progress as a log file or a pipe sees them (SLURM, nohup, `| tee`): whole lines, never
wrapped at a terminal width, a progress line every so often, and the run's own copy of the log."""

import subprocess
import sys

from tests.conftest import child_env

LONG = "wrote " + "/a/rather/long/run/directory" * 8 + "/round_01/responses.jsonl: dropped 1 row(s), 3 kept"


def stderr_of(code: str, **env) -> str:
    environment = {**child_env(), "SYNPO_QUIET": "0", "COLUMNS": "80", **env}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_a_log_line_longer_than_a_terminal_is_one_line_in_a_pipe():
    err = stderr_of(f"from synpo.progress import log; log({LONG!r}); log('[bold]next[/bold] line')")
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].endswith(LONG) and len(lines[0]) > 200
    assert lines[1].endswith(" next line")  # markup rendered away, not printed


def test_a_bar_in_a_pipe_is_a_line_every_interval_and_one_at_the_end():
    code = ("import time\nfrom synpo.progress import progress\n"
            "with progress('answering', total=3, unit='prompts') as bar:\n"
            "    for _ in range(3):\n        time.sleep(0.05); bar.advance()\n")
    lines = stderr_of(code, SYNPO_PROGRESS_SECONDS="0").splitlines()
    assert [line.split()[1] for line in lines] == ["answering:"] * 4, lines
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3", "3/3"]
    assert "eta" in lines[0] and "prompts/s" in lines[0] and "eta" not in lines[-1]
    # the default interval is long: three quick steps make the closing line only
    assert len(stderr_of(code).splitlines()) == 1


def test_log_to_keeps_a_plain_copy(tmp_path, monkeypatch):
    from synpo import progress

    monkeypatch.setenv("SYNPO_QUIET", "1")  # the terminal copy off; the file copy is the run's record
    progress.log_to(tmp_path / "logs" / "synpo.log")
    try:
        progress.log(f"[bold]{LONG}[/bold]")
        progress.log("second")
    finally:
        progress.log_to(None)
    progress.log("not in the file")
    lines = (tmp_path / "logs" / "synpo.log").read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" " + LONG) and lines[1].endswith(" second")
