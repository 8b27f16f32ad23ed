"""Seed sets and keyword corpora from the formats users have.

Seed sets (prompt + gold response): JSONL with configurable field names, Alpaca JSON
(instruction + input -> prompt, output -> response), ShareGPT (first human turn and the
answer after it), or a `datasets` hub id / saved directory. Corpora are *streamed*: plain
text (paragraphs separated by blank lines), JSONL, parquet, or a `datasets` id, read lazily
so a RefinedWeb-sized corpus is never loaded whole.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

from synpo.errors import UserError
from synpo.recipe import CorpusData, SeedData, resolve_path


def _row_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def _saved_by_datasets(path: str) -> bool:
    """A directory written by `save_to_disk` (as opposed to a directory of data files)."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in ("state.json", "dataset_dict.json"))


def _hf_rows(path: str, split: str, streaming: bool, subset: str | None = None):
    """Rows of a saved dataset, a directory of data files, or a hub id; `streaming` reads lazily."""
    import datasets

    try:
        if _saved_by_datasets(path):  # memory-mapped Arrow: rows are read as iterated
            ds = datasets.load_from_disk(path)
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
            return iter(ds)
        return iter(datasets.load_dataset(path, subset, split=split, streaming=streaming))
    except (OSError, ValueError, KeyError, FileNotFoundError) as e:
        raise UserError(f"{path}: could not load the dataset (split {split!r}): {str(e).splitlines()[0]}") from None


def _jsonl(path: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def _sharegpt_pair(row: dict) -> tuple[str, str] | None:
    turns = row.get("conversations") or row.get("messages") or []
    for first, second in zip(turns, turns[1:]):
        role1 = first.get("from", first.get("role"))
        role2 = second.get("from", second.get("role"))
        if role1 in ("human", "user") and role2 in ("gpt", "assistant"):
            return first.get("value", first.get("content")), second.get("value", second.get("content"))
    return None


def load_seed(cfg: SeedData, seed: int = 0) -> list[dict]:
    """Seed rows as {"id", "prompt", "response"}; empty and duplicate prompts are dropped.
    With `limit`, a random sample of that many rows drawn with `seed` (the run's seed), kept in
    file order: the paper samples its seed prompts at random, and a file's first rows are often
    one source or one topic."""
    path = resolve_path(cfg.path)
    pairs: list[tuple[str, str]] = []
    if cfg.format == "jsonl":
        for lineno, row in _jsonl(path):
            missing = [f for f in (cfg.prompt_field, cfg.response_field) if f not in row]
            if missing:
                raise UserError(f"{path}:{lineno}: no field {missing[0]!r}; set data.seed.prompt_field / "
                                "response_field to the file's field names")
            pairs.append((row[cfg.prompt_field], row[cfg.response_field]))
    elif cfg.format == "alpaca":
        try:
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        for i, row in enumerate(rows):
            if "instruction" not in row or "output" not in row:
                raise UserError(f"{path}: record {i}: Alpaca format needs 'instruction' and 'output'")
            prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            pairs.append((prompt, row["output"]))
    elif cfg.format == "sharegpt":
        rows = (r for _, r in _jsonl(path)) if path.endswith(".jsonl") else json.loads(Path(path).read_text())
        pairs.extend(p for p in map(_sharegpt_pair, rows) if p)
    else:  # hf
        for row in _hf_rows(path, cfg.split, streaming=False):
            if "conversations" in row or "messages" in row and isinstance(row.get("messages"), list):
                pair = _sharegpt_pair(row)
                if pair:
                    pairs.append(pair)
            else:
                pairs.append((row[cfg.prompt_field], row[cfg.response_field]))
    seen, out = set(), []
    for prompt, response in pairs:
        if not prompt or not response or not str(prompt).strip() or prompt in seen:
            continue
        seen.add(prompt)
        out.append({"id": _row_id(prompt), "prompt": str(prompt).strip(), "response": str(response).strip()})
    if not out:
        raise UserError(f"{path}: the seed set is empty")
    if cfg.limit and len(out) > cfg.limit:
        chosen = sorted(random.Random(seed).sample(range(len(out)), cfg.limit))
        out = [out[i] for i in chosen]
    return out


def iter_corpus(cfg: CorpusData) -> Iterator[str]:
    """Paragraphs of the keyword corpus, streamed: a generator that reads the source as it is
    consumed (text and JSONL line by line, parquet one record batch at a time, a `datasets` id
    with `streaming=True`), so memory does not grow with the corpus.

    text: paragraphs are separated by blank lines. Other formats: one row is one paragraph,
    or, with `split_paragraphs`, each non-empty line of a row is one.
    """
    path = resolve_path(cfg.path)
    n = 0

    def rows() -> Iterator[str]:
        if cfg.format == "text":
            paragraph: list[str] = []
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        paragraph.append(line.strip())
                    elif paragraph:
                        yield " ".join(paragraph)
                        paragraph = []
            if paragraph:
                yield " ".join(paragraph)
        elif cfg.format == "jsonl":
            for lineno, row in _jsonl(path):
                if cfg.text_field not in row:
                    raise UserError(f"{path}:{lineno}: no field {cfg.text_field!r}; set data.corpus.text_field")
                yield row[cfg.text_field]
        elif cfg.format == "parquet":
            import pyarrow.parquet as pq

            # pre_buffer off: with it, pyarrow reads ahead the column chunks of every row group, and
            # memory grows with the file; without it, one row group's chunk at a time.
            parquet = pq.ParquetFile(path, pre_buffer=False)
            if cfg.text_field not in parquet.schema_arrow.names:
                raise UserError(f"{path}: no column {cfg.text_field!r} (columns: "
                                f"{', '.join(parquet.schema_arrow.names)}); set data.corpus.text_field")
            for batch in parquet.iter_batches(columns=[cfg.text_field], batch_size=1024, use_threads=False):
                yield from batch.column(0).to_pylist()
        else:
            for row in _hf_rows(path, cfg.split, streaming=True, subset=cfg.subset):
                if cfg.text_field not in row:
                    raise UserError(f"{path}: rows have no field {cfg.text_field!r} (fields: {', '.join(row)}); "
                                    "set data.corpus.text_field")
                yield row[cfg.text_field]

    def paragraphs() -> Iterator[str]:
        for text in rows():
            if cfg.split_paragraphs and cfg.format != "text" and text:
                yield from text.splitlines()
            else:
                yield text

    for text in paragraphs():
        if text and text.strip():
            yield text.strip()
            n += 1
            if cfg.limit and n >= cfg.limit:
                return
