"""The run directory: stage records, fingerprints and resume.

`state.json` lists finished stages in order, each with the fingerprint it ran under (a hash
of the recipe sections it read and of the fingerprints of the stages it read from) and a
short summary. `Run.stage(...)` skips a stage whose record matches, re-runs one whose inputs
changed (and says so), and gives each stage a work directory that survives a kill, so a
half-done stage picks up from its last finished shard. A work directory written under
another fingerprint is wiped first: stale shards never leak into a changed stage. Temporary
files of writes a kill interrupted are removed when the run directory is opened.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from synpo.errors import UserError
from synpo.io import read_json, write_json, write_text
from synpo.progress import log


def fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Run:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        try:
            self.state = read_json(self.state_path) if self.state_path.exists() else {"stages": {}}
        except ValueError as e:  # written atomically, so only a hand edit gets here
            raise UserError(f"{self.state_path}: not valid JSON ({e}); restore it or start a new --run-dir") from None
        self._sweep()

    def _sweep(self) -> None:
        """Remove what killed writers left: atomic temporaries (`.NAME.*.tmp`) and swapped-out
        copies (`.NAME.old`). One run owns its directory, so none of them is being written now."""
        for leftover in [*self.dir.rglob(".*.tmp"), *self.dir.rglob(".*.old")]:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    # ---- paths ----
    def round_dir(self, t: int) -> Path:
        return self.dir / f"round_{t:02d}"

    def work_dir(self, key: str) -> Path:
        return self.dir / ".work" / key.replace("/", "__")

    # ---- records ----
    def record(self, key: str) -> dict | None:
        return self.state["stages"].get(key)

    def fingerprint_of(self, key: str) -> str:
        record = self.record(key)
        if record is None:
            raise KeyError(f"stage {key} has not run")
        return record["fingerprint"]

    def _save(self) -> None:
        write_json(self.state_path, self.state)

    def stage(self, key: str, fp: str, fn: Callable[[Path], dict], outputs: list[Path] = ()) -> dict:
        """Run `fn(work_dir)` unless `key` already finished under fingerprint `fp`.

        `outputs` are the artifacts the stage must leave; a record whose outputs are gone
        is treated as unfinished.
        """
        record = self.record(key)
        if record and record["fingerprint"] == fp and all(Path(o).exists() for o in outputs):
            # a kill between recording a stage and removing its scratch leaves the scratch behind
            shutil.rmtree(self.work_dir(key), ignore_errors=True)
            log(f"[dim]skip[/dim] {key} (finished, inputs unchanged)")
            return record["summary"]
        if record and record["fingerprint"] != fp:
            log(f"[yellow]re-run[/yellow] {key}: its recipe section or inputs changed since it ran")
        work = self.work_dir(key)
        stamp = work / "fingerprint"
        if work.exists() and (not stamp.exists() or stamp.read_text() != fp):
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        write_text(stamp, fp)
        started = time.time()
        summary = fn(work) or {}
        summary["seconds"] = round(time.time() - started, 1)
        self.state["stages"][key] = {"fingerprint": fp, "summary": summary, "finished": time.time()}
        self._save()
        shutil.rmtree(work, ignore_errors=True)
        log(f"[green]done[/green] {key}: " + ", ".join(f"{k} {v}" for k, v in summary.items() if _short(v)))
        return summary


def _short(value) -> bool:
    return isinstance(value, int | float | str) and len(str(value)) < 40
