"""Progress bars and log lines: rich when available, quiet under SYNPO_QUIET=1 (tests)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)
# Results (tables a user may pipe or redirect) go to stdout; logs and bars stay on stderr.
results = Console(highlight=False)


def quiet() -> bool:
    return os.environ.get("SYNPO_QUIET") == "1"


def log(message: str) -> None:
    """One human-readable line on stderr, time-stamped."""
    if not quiet():
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


class _RateColumn(TextColumn):
    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        return "" if not speed else f"{speed:.1f} {self.unit}/s"


@contextmanager
def progress(desc: str, total: int, unit: str = "it"):
    """A bar with counts, rate, elapsed time and ETA."""
    if quiet() or total == 0:
        yield _Bar(None, None)
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
