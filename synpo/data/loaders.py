"""Seed sets and keyword corpora from the formats users have.

Seed sets (prompt + gold response): JSONL with configurable field names (dotted paths reach
nested fields: Self-Instruct's `instances.0.output`), Alpaca JSON (instruction + input ->
prompt, output -> response), ShareGPT (first human turn and the answer after it), or a
`datasets` hub id / saved directory. Files are UTF-8 (a byte-order mark is accepted); a field
that is not text is an error naming the file, line and field (docs/data.md). Corpora are *streamed*: plain
text (paragraphs separated by blank lines), JSONL, parquet, or a `datasets` id, read lazily
so a RefinedWeb-sized corpus is never loaded whole.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
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


def _decoded_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, read as bytes so a bad byte is reported at its line.
    A UTF-8 byte-order mark (files saved by common Windows tools) is skipped."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                "save the file as UTF-8") from None


def _read_text(path: str) -> str:
    return "".join(text for _, text in _decoded_lines(path))


def _jsonl(path: str) -> Iterator[tuple[int, dict]]:
    for lineno, line in _decoded_lines(path):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); a JSONL file holds one JSON object "
                                "per line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: a JSONL row must be a JSON object, not {_kind(row)}")
            yield lineno, row


def _json_records(path: str, what: str) -> Iterator[tuple[int, dict]]:
    """(line, record) of a JSON file holding a list of objects (Alpaca, ShareGPT)."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        keys = f" with keys {', '.join(list(data)[:5])}" if isinstance(data, dict) else ""
        raise UserError(f"{path}:1: the file is a JSON {_kind(data).split()[-1]}{keys}, but {what} is a JSON list "
                        "of records; give the list itself (or use format jsonl for one object per line)")
    lines = _record_lines(text)
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lines[i]}: record {i} must be a JSON object, not {_kind(row)}")
        yield lines[i], row


def _record_lines(text: str) -> list[int]:
    """The line each element of a top-level JSON list starts on."""
    decoder, lines = json.JSONDecoder(), []
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return lines
        lines.append(text.count("\n", 0, i) + 1)
        i = decoder.raw_decode(text, i)[1]


def _kind(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            str: "text", type(None): "null"}.get(type(value), type(value).__name__)


MISSING = object()


def field(row: dict, path: str):
    """row[path], where a dotted path reaches into nested objects and lists: `instances.0.output`
    is row["instances"][0]["output"]. MISSING when any step is absent."""
    node = row
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def _text(value, where: str, name: str, setting: str) -> str | None:
    """A text field's value; None (a blank to drop) for null; an error for numbers, lists and objects."""
    if value is None or isinstance(value, str):
        return value
    shown = json.dumps(value, ensure_ascii=False)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise UserError(f"{where}: field {name!r} is {_kind(value)} ({shown}), not text; set {setting} to a text "
                    "field (a dotted path such as instances.0.output reaches into nested ones)")


def _turn(value, role: str):
    """A field holding a conversation (a list of {role, content} turns, as UltraFeedback's `chosen`):
    its first user turn for a prompt, its last assistant turn for an answer. Anything else as it is."""
    if not (isinstance(value, list) and value and all(isinstance(t, dict) and "role" in t for t in value)):
        return value
    turns = [t.get("content") for t in value if t["role"] == role]
    return (turns[0] if role == "user" else turns[-1]) if turns else value


def _sharegpt_pair(row: dict, where: str) -> tuple[str | None, str | None] | None:
    turns = row.get("conversations") or row.get("messages") or []
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise UserError(f"{where}: field 'conversations' must be a list of {{from, value}} turns")
    for first, second in zip(turns, turns[1:]):
        role1 = first.get("from", first.get("role"))
        role2 = second.get("from", second.get("role"))
        if role1 in ("human", "user") and role2 in ("gpt", "assistant"):
            return (_text(first.get("value", first.get("content")), where, "value", "the turns' value"),
                    _text(second.get("value", second.get("content")), where, "value", "the turns' value"))
    return None


@dataclass
class Seed:
    """The seed set: rows {"id", "prompt", "response"}, where each came from (`path:line`), and
    how many rows were dropped, by reason."""

    rows: list[dict]
    where: list[str]
    dropped: Counter


def read_seed(cfg: SeedData, sample_seed: int = 0) -> Seed:
    """Read and check the seed set. Rows whose prompt or answer is blank (or null) and repeated
    prompts are dropped and counted; anything else that is not a text prompt and a text answer
    is an error naming the file, line and field. With `limit`, a random sample of that many rows
    drawn with `seed` (the run's seed), kept in file order: the paper samples its seed prompts at
    random, and a file's first rows are often one source or one topic."""
    path = resolve_path(cfg.path)
    pairs: list[tuple[str, str | None, str | None]] = []  # (where, prompt, response)
    prompt_set, response_set = "data.seed.prompt_field", "data.seed.response_field"
    if cfg.format in ("jsonl", "hf"):
        if cfg.format == "jsonl":
            source = ((f"{path}:{lineno}", row) for lineno, row in _jsonl(path))
        else:
            source = ((f"{path}: row {i}", row) for i, row in enumerate(_hf_rows(path, cfg.split, streaming=False)))
        for where, row in source:
            named = field(row, cfg.prompt_field) is not MISSING and field(row, cfg.response_field) is not MISSING
            # a conversation row (H4's `messages`) is read as one only when the named fields are not there:
            # prompt_field / response_field, when the row has them, are what the recipe asked for
            if cfg.format == "hf" and not named and ("conversations" in row or isinstance(row.get("messages"), list)):
                pair = _sharegpt_pair(row, where)
                if pair:
                    pairs.append((where, *pair))
                continue
            values = {}
            for name, setting in ((cfg.prompt_field, prompt_set), (cfg.response_field, response_set)):
                value = field(row, name)
                if value is MISSING:
                    raise UserError(f"{where}: no field {name!r} (fields: {', '.join(row)}); set {setting} to the "
                                    "file's field name (a dotted path such as instances.0.output reaches nested ones)")
                values[name] = _text(_turn(value, "user" if name == cfg.prompt_field else "assistant"), where,
                                     name, setting)
            prompt = values[cfg.prompt_field]
            if cfg.input_field:
                extra = field(row, cfg.input_field)
                extra = None if extra is MISSING else _text(extra, where, cfg.input_field, "data.seed.input_field")
                prompt = _joined(prompt, extra)
            pairs.append((where, prompt, values[cfg.response_field]))
    elif cfg.format == "alpaca":
        for lineno, row in _json_records(path, "Alpaca format"):
            where = f"{path}:{lineno}"
            missing = [f for f in ("instruction", "output") if f not in row]
            if missing:
                raise UserError(f"{where}: record has no field {missing[0]!r} (fields: {', '.join(row)}); Alpaca "
                                "records are {instruction, input, output}: for other field names use format jsonl "
                                "with data.seed.prompt_field / response_field")
            instruction = _text(row["instruction"], where, "instruction", "format jsonl with prompt_field")
            extra = _text(row.get("input"), where, "input", "format jsonl with input_field")
            pairs.append((where, _joined(instruction, extra),
                          _text(row["output"], where, "output", "format jsonl with response_field")))
    else:  # sharegpt
        records = ((f"{path}:{n}", r) for n, r in (_jsonl(path) if path.endswith(".jsonl")
                                                    else _json_records(path, "ShareGPT format")))
        for where, row in records:
            pair = _sharegpt_pair(row, where)
            if pair:
                pairs.append((where, *pair))
    seen: set[str] = set()
    seed = Seed([], [], Counter())
    for where, raw_prompt, response in pairs:
        prompt, response = (raw_prompt or "").strip(), (response or "").strip()
        if not prompt:
            seed.dropped["blank prompt"] += 1
        elif not response:
            seed.dropped["blank answer"] += 1
        elif prompt in seen:
            seed.dropped["repeated prompt"] += 1
        else:
            seen.add(prompt)
            seed.rows.append({"id": _row_id(raw_prompt), "prompt": prompt, "response": response})
            seed.where.append(where)
    if not seed.rows:
        why = f" ({_dropped(seed.dropped)})" if seed.dropped else ""
        raise UserError(f"{path}: the seed set has no usable row{why}; it needs rows with a prompt and an answer")
    if cfg.limit and len(seed.rows) > cfg.limit:
        chosen = sorted(random.Random(sample_seed).sample(range(len(seed.rows)), cfg.limit))
        seed.rows, seed.where = [seed.rows[i] for i in chosen], [seed.where[i] for i in chosen]
    return seed


def _joined(instruction: str | None, extra: str | None) -> str | None:
    """Alpaca's prompt: the instruction, then the input after a blank line when there is one."""
    return f"{instruction}\n\n{extra}" if instruction and extra and extra.strip() else instruction


def _dropped(counts: Counter) -> str:
    return ", ".join(f"{n} with a {why}" for why, n in sorted(counts.items()))


def report_dropped(cfg: SeedData, seed: Seed) -> None:
    if seed.dropped:
        from synpo.progress import log

        log(f"[yellow]seed[/yellow] {cfg.path}: dropped {sum(seed.dropped.values())} row(s), "
            f"{_dropped(seed.dropped)}; {len(seed.rows)} kept")


def load_seed(cfg: SeedData, seed: int = 0) -> list[dict]:
    """Seed rows as {"id", "prompt", "response"}; blank and repeated prompts are dropped (and logged);
    `limit` draws a random sample with `seed`."""
    checked = read_seed(cfg, seed)
    report_dropped(cfg, checked)
    return checked.rows


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
            for _, line in _decoded_lines(path):
                if line.strip():
                    paragraph.append(line.strip())
                elif paragraph:
                    yield " ".join(paragraph)
                    paragraph = []
            if paragraph:
                yield " ".join(paragraph)
        elif cfg.format == "jsonl":
            for lineno, row in _jsonl(path):
                text = field(row, cfg.text_field)
                if text is MISSING:
                    raise UserError(f"{path}:{lineno}: no field {cfg.text_field!r} (fields: {', '.join(row)}); "
                                    "set data.corpus.text_field")
                yield _text(text, f"{path}:{lineno}", cfg.text_field, "data.corpus.text_field")
        elif cfg.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # pre_buffer off: with it, pyarrow reads ahead the column chunks of every row group, and
            # memory grows with the file; without it, one row group's chunk at a time.
            parquet = pq.ParquetFile(path, pre_buffer=False)
            if cfg.text_field not in parquet.schema_arrow.names:
                raise UserError(f"{path}: no column {cfg.text_field!r} (columns: "
                                f"{', '.join(parquet.schema_arrow.names)}); set data.corpus.text_field")
            if not pa.types.is_string(column_type := parquet.schema_arrow.field(cfg.text_field).type) and \
                    not pa.types.is_large_string(column_type):
                raise UserError(f"{path}: column {cfg.text_field!r} holds {column_type}, not text; "
                                "set data.corpus.text_field to a text column")
            for batch in parquet.iter_batches(columns=[cfg.text_field], batch_size=1024, use_threads=False):
                yield from batch.column(0).to_pylist()
        else:
            for i, row in enumerate(_hf_rows(path, cfg.split, streaming=True, subset=cfg.subset)):
                text = field(row, cfg.text_field)
                if text is MISSING:
                    raise UserError(f"{path}: rows have no field {cfg.text_field!r} (fields: {', '.join(row)}); "
                                    "set data.corpus.text_field")
                yield _text(text, f"{path}: row {i}", cfg.text_field, "data.corpus.text_field")

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
