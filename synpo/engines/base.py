"""The one generation interface every stage goes through.

An engine turns chat requests into completions. Prompts are always rendered by the model's
own chat template (the tokenizer's), so every engine sees the same token ids for the same
conversation. `generate_sharded` streams finished completions to shard files: a stage killed
half-way keeps its finished shards and regenerates only the rest, with the same result an
uninterrupted run would have had (each shard is seeded from the run seed and its index).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from synpo.io import read_jsonl, write_jsonl


@dataclass
class Sampling:
    """Sampling parameters shared by all engines. temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    n: int = 1
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    top_logprobs: int = 0
    """Ask for the k most likely tokens at each generated position (OpenAI-compatible servers;
    the in-process engines ignore it)."""

    def for_shard(self, index: int) -> Sampling:
        digest = hashlib.sha256(f"{self.seed}:{index}".encode()).hexdigest()
        return Sampling(**{**asdict(self), "seed": int(digest[:8], 16)})


@dataclass
class Request:
    id: str
    messages: list[dict]
    # The request's own sampling seed, where a caller splits shards across engines (engines/parallel.py):
    # the seed it would have had in its shard. None: from the call's seed and the request's position.
    seed: int | None = None


@dataclass
class Completion:
    id: str
    texts: list[str]
    finish_reasons: list[str]  # "stop" (end of turn or a stop string) or "length"
    num_tokens: list[int]
    # per sample: each generated token's top alternatives [{"token", "logprob"}, ...], or None where
    # the engine or server gave none
    top_logprobs: list | None = None

    @property
    def text(self) -> str:
        return self.texts[0]


class Engine(Protocol):
    name: str

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]: ...

    def close(self) -> None: ...


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def generate_sharded(
    engine: Engine,
    requests: list[Request],
    sampling: Sampling,
    shard_dir: str | Path,
    shard_size: int = 256,
    desc: str = "generate",
) -> list[Completion]:
    """Generate completions for `requests`, one shard file at a time, skipping finished shards.

    Shard i always holds requests[i*shard_size:(i+1)*shard_size] and is sampled with
    `sampling.for_shard(i)`, so a resumed stage reproduces an uninterrupted one exactly.
    """
    from synpo.progress import log, progress

    if hasattr(engine, "generate_sharded"):  # data-parallel workers (engines/parallel.py) share the shard list
        return engine.generate_sharded(requests, sampling, shard_dir, shard_size=shard_size, desc=desc)
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = [requests[i : i + shard_size] for i in range(0, len(requests), shard_size)]
    results: list[Completion] = []
    started, done_new = time.time(), 0
    with progress(desc, total=len(requests), unit="req") as bar:
        for index, shard in enumerate(shards):
            path = shard_dir / f"shard-{index:05d}.jsonl"
            cached = _read_shard(path, shard)
            if cached is None:
                cached = engine.generate(shard, sampling.for_shard(index))
                write_jsonl(path, (asdict(c) for c in cached))
                done_new += len(shard)
            results.extend(cached)
            bar.advance(len(shard))
    if done_new:
        rate = done_new / max(time.time() - started, 1e-9)
        log(f"{desc}: {done_new} generated ({rate:.1f}/s), {len(requests) - done_new} from finished shards")
    return results


def _read_shard(path: Path, shard: list[Request]) -> list[Completion] | None:
    """A finished shard's completions, or None when absent or written for other requests."""
    if not path.exists():
        return None
    rows = read_jsonl(path)
    if [r["id"] for r in rows] != [q.id for q in shard]:
        return None
    return [Completion(**r) for r in rows]
