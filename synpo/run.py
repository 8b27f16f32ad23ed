"""The run directory: its layout, stage records, fingerprints, seeds and resume.

A stage (`Stage`) is a key (its name in state.json and its place in the run directory), typed
inputs (what it reads from the recipe) and the upstream stages whose artifacts it reads. Its
fingerprint is a hash of exactly those inputs, less the fields that decide only where or how
fast work runs (`synpo.recipe.NOT_FINGERPRINTED`), and of its upstream stages' fingerprints.
`state.json` lists finished stages in order, each with the fingerprint it ran under and a
short summary. `Run.stage(...)` skips a stage whose record matches, re-runs one whose inputs
changed (and says so), and gives each stage a work directory that survives a kill, so a
half-done stage picks up from its last finished shard. A work directory written under
another fingerprint is wiped first: stale shards never leak into a changed stage. Temporary
files of writes a kill interrupted are removed when the run directory is opened.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from synpo.errors import UserError
from synpo.io import read_json, write_json, write_text
from synpo.progress import log


def fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_seed(seed: int, *names) -> int:
    """The one seed rule: every sampling and training seed is derived from the recipe's seed and the
    names of what draws it (a stage key, then a stream within the stage), never by arithmetic on
    the seed (seed + t and seed * 1000 + t collide across stages)."""
    return random.Random(":".join(map(str, (seed, *names)))).randrange(2**31)


# ---- layout: where each stage's artifact lives ------------------------------------------

THETA0, SEED_SET = "θ0", "seed set"  # sources: read by stages, produced by none


def round_name(t: int) -> str:
    return f"round_{t:02d}"


def stage_key(t: int | None, name: str) -> str:
    """`round_03/pairs`, or `prompt_generator` for a stage that runs once."""
    return name if t is None else f"{round_name(t)}/{name}"


def round_of(key: str) -> int | None:
    head = key.split("/")[0]
    return int(head[6:]) if head.startswith("round_") else None


@dataclass(frozen=True)
class Stage:
    key: str
    inputs: BaseModel
    """Everything the stage reads besides upstream artifacts (typed: one of the stages' input classes)."""
    reads: dict = field(default_factory=dict)
    """Upstream artifacts by role: a stage key, THETA0 or SEED_SET, or a list of stage keys."""
    output: str = ""
    """Its artifact, relative to the run directory (a file or a directory)."""

    @property
    def round(self) -> int | None:
        return round_of(self.key)


def fingerprint_view(value):
    """`value` as plain data for a fingerprint: sections without their NOT_FINGERPRINTED fields."""
    from synpo.recipe import NOT_FINGERPRINTED

    if isinstance(value, BaseModel):
        skip = set().union(*(NOT_FINGERPRINTED.get(c.__name__, set()) for c in type(value).__mro__))
        return {type(value).__name__: {k: fingerprint_view(getattr(value, k))
                                       for k in type(value).model_fields if k not in skip}}
    if isinstance(value, list | tuple):
        return [fingerprint_view(v) for v in value]
    if isinstance(value, dict):
        return {k: fingerprint_view(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def stage_fingerprint(stage: Stage, fingerprints: dict[str, str]) -> str:
    """A hash of the stage's inputs and of the fingerprints of what it reads (`fingerprints` holds the
    sources' and every earlier stage's)."""
    upstream = {role: [fingerprints[k] for k in key] if isinstance(key, list) else fingerprints[key]
                for role, key in stage.reads.items()}
    return fingerprint(stage.key, fingerprint_view(stage.inputs), upstream)


def fingerprints(stages: list[Stage], sources: dict[str, str]) -> dict[str, str]:
    """Every stage's fingerprint, walking the stages in order from the sources' (θ0, the seed set)."""
    out = dict(sources)
    for stage in stages:
        out[stage.key] = stage_fingerprint(stage, out)
    return out


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
        return self.dir / round_name(t)

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
