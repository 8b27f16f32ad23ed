"""Progress bars and log lines: rich when available, quiet under SYNPO_QUIET=1 (tests).

In a terminal, a bar redraws in place. Piped to a file (SLURM, nohup, `| tee`), nothing redraws:
every log line is written whole, never wrapped at a terminal width (logs are read with grep), and a
bar becomes a plain line every SYNPO_PROGRESS_SECONDS (default 30) and one when it ends. A run also
copies its log lines to a file of its own (`log_to`).
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# soft_wrap: a line longer than the terminal (or the 80 columns rich assumes for a pipe) is written
# as one line, never broken by inserted newlines.
console = Console(stderr=True, highlight=False, soft_wrap=True)
# Results (tables a user may pipe or redirect) go to stdout; logs and bars stay on stderr.
results = Console(highlight=False)
_log_file: Path | None = None
_MARKUP = re.compile(r"\[/?(?:bold|dim|red|green|yellow|cyan|italic)\]")


def quiet() -> bool:
    return os.environ.get("SYNPO_QUIET") == "1"


def log_to(path: str | Path | None) -> None:
    """Also append every log line (plain text, time-stamped) to `path`; None stops."""
    global _log_file
    _log_file = Path(path) if path else None
    if _log_file:
        _log_file.parent.mkdir(parents=True, exist_ok=True)


def log(message: str) -> None:
    """One human-readable line on stderr, time-stamped."""
    stamp = time.strftime("%H:%M:%S")
    if _log_file:
        with open(_log_file, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d')} {stamp} {_MARKUP.sub('', message)}\n")
    if not quiet():
        console.print(f"[dim]{stamp}[/dim] {message}")


def _interval() -> float:
    return float(os.environ.get("SYNPO_PROGRESS_SECONDS", "30"))


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


class _Lines:
    """A bar for a log that is not a terminal: `desc: done/total, rate, elapsed, eta` every so often."""

    def __init__(self, desc: str, total: int, unit: str):
        self.desc, self.total, self.unit = desc, total, unit
        self.done, self.start = 0, time.monotonic()
        self.last = self.start

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self.last >= _interval():
            self.line()

    def line(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = f", eta {_clock((self.total - self.done) / rate)}" if rate and self.done < self.total else ""
        log(f"{self.desc}: {self.done}/{self.total} {self.unit} ({rate:.2f} {self.unit}/s, "
            f"{_clock(elapsed)} elapsed{eta})")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _RateColumn(TextColumn):
    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        return "" if not speed else f"{speed:.1f} {self.unit}/s"


@contextmanager
def progress(desc: str, total: int, unit: str = "it"):
    """A bar with counts, rate, elapsed time and ETA (plain lines when stderr is not a terminal)."""
    if quiet() or total == 0:
        yield _Bar(None, None)
        return
    if not console.is_terminal:
        lines = _Lines(desc, total, unit)
        yield lines
        lines.line()
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=False,
    )
    with bar:
        task = bar.add_task(desc, total=total)
        yield _Bar(bar, task)


def quiet_libraries() -> None:
    """Silence per-call progress bars and chatter of datasets/transformers: synpo shows its own."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes (extra `bnb`) warns on import on CPUs with AVX512-BF16 that an optional hub kernel is missing.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
    except ImportError:
        pass
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("trl").setLevel(logging.ERROR)
