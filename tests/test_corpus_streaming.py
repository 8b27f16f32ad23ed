"""Keyword corpora at scale: paragraphs are streamed from text / JSONL / parquet / `datasets`
sources without reading the whole corpus, and memory does not grow with its size."""

import json
import random
import tracemalloc

import pytest

from synpo.data.keywords import content_keywords, corpus_keywords
from synpo.data.loaders import iter_corpus
from synpo.errors import UserError
from synpo.recipe import CorpusData

WORDS = ("river mountain engine harvest library violin planet garden copper lantern theory market "
         "bridge winter signal canvas orchard harbor glacier compass").split()


def paragraph(rng: random.Random, i: int) -> str:
    sentences = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(4)]
    return f"Paragraph {i}. " + " ".join(sentences)


def write_text_corpus(path, n, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(paragraph(rng, i) + "\n\n")
    return path


def peak_python_memory(iterator) -> tuple[int, int]:
    """(paragraphs read, peak traced allocation in bytes while consuming the iterator)."""
    tracemalloc.start()
    count = sum(1 for _ in iterator)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return count, peak


def test_text_corpus_streams_with_flat_memory(tmp_path):
    small = write_text_corpus(tmp_path / "small.txt", 5_000)
    big = write_text_corpus(tmp_path / "big.txt", 40_000)
    assert big.stat().st_size > 10_000_000  # a multi-MB corpus
    n_small, peak_small = peak_python_memory(iter_corpus(CorpusData(path=str(small), format="text")))
    n_big, peak_big = peak_python_memory(iter_corpus(CorpusData(path=str(big), format="text")))
    assert (n_small, n_big) == (5_000, 40_000)
    # Reading the file whole would cost >10 MB; streaming keeps one paragraph at a time.
    assert peak_big < 1_000_000
    assert peak_big < 2 * peak_small + 200_000  # 8x the corpus, not 8x the memory


def test_jsonl_corpus_yields_before_reading_the_whole_file(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rng = random.Random(1)
    with open(path, "w") as f:
        for i in range(20_000):
            f.write(json.dumps({"text": paragraph(rng, i)}) + "\n")
        f.write("{not json at the very end\n")
    it = iter_corpus(CorpusData(path=str(path), format="jsonl"))
    first = [next(it) for _ in range(3)]  # fine: the broken last line has not been read yet
    assert first[0].startswith("Paragraph 0.")
    with pytest.raises(UserError, match=r"corpus.jsonl:20001: not valid JSON"):
        sum(1 for _ in it)
    limited = list(iter_corpus(CorpusData(path=str(path), format="jsonl", limit=5)))
    assert len(limited) == 5  # `limit` stops reading early (the broken line is never reached)


def write_parquet(path, n, row_group=2_000, seed=2):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    writer = None
    for start in range(0, n, row_group):
        table = pa.table({"id": list(range(start, min(n, start + row_group))),
                          "content": [paragraph(rng, i) for i in range(start, min(n, start + row_group))]})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def arrow_peak(path) -> tuple[int, int]:
    """(rows read, peak Arrow memory in bytes while streaming the parquet corpus)."""
    import pyarrow as pa

    baseline, peak, count = pa.total_allocated_bytes(), 0, 0
    for _ in iter_corpus(CorpusData(path=str(path), format="parquet", text_field="content")):
        count += 1
        if count % 250 == 0:
            peak = max(peak, pa.total_allocated_bytes() - baseline)
    return count, peak


def test_parquet_corpus_memory_does_not_grow_with_the_file(tmp_path):
    small = write_parquet(tmp_path / "small.parquet", 10_000)
    big = write_parquet(tmp_path / "big.parquet", 40_000)
    (n_small, peak_small), (n_big, peak_big) = arrow_peak(small), arrow_peak(big)
    assert (n_small, n_big) == (10_000, 40_000)
    text_bytes = 40_000 * len(paragraph(random.Random(0), 0))
    # One row group's column chunk at a time (pyarrow's default pre-buffering grew with the file).
    assert peak_big < 1.3 * peak_small
    assert peak_big < text_bytes / 4
    with pytest.raises(UserError, match="no column 'text'"):
        next(iter_corpus(CorpusData(path=str(small), format="parquet", text_field="text")))


def test_datasets_source_streams_a_directory_of_data_files(tmp_path):
    data = tmp_path / "web" / "data"
    data.mkdir(parents=True)
    write_parquet(data / "train-00000-of-00001.parquet", 3_000, row_group=500)
    cfg = CorpusData(path=str(tmp_path / "web"), format="hf", text_field="content", limit=10)
    rows = list(iter_corpus(cfg))
    assert len(rows) == 10 and rows[0].startswith("Paragraph 0.")
    # web pages hold many paragraphs, one per line: split_paragraphs yields each
    pages = tmp_path / "pages.jsonl"
    pages.write_text(json.dumps({"text": "First line about copper and rivers.\n\nSecond line of a glacier "
                                         "harbor.\nThird one, winter signal."}) + "\n")
    split = list(iter_corpus(CorpusData(path=str(pages), format="jsonl", split_paragraphs=True)))
    assert split == ["First line about copper and rivers.", "Second line of a glacier harbor.",
                     "Third one, winter signal."]
    with pytest.raises(UserError, match="text_field"):
        next(iter_corpus(CorpusData(path=str(tmp_path / "web"), format="hf", text_field="text")))


def test_three_keywords_per_paragraph_without_stopwords_or_names():
    text = ("Margaret walked along the river with her old violin. Later, Margaret and Tom repaired the "
            "copper lantern near the harbor.")
    words = content_keywords(text)
    assert "margaret" not in words and "tom" not in words  # capitalised mid-sentence, and a listed first name
    assert not {"the", "with", "her", "and"} & set(words)
    assert {"river", "violin", "copper", "lantern", "harbor"} <= set(words)
    rng = random.Random(0)
    picked = corpus_keywords(text, rng, k=3)
    assert len(picked) == 3 and len(set(picked)) == 3 and set(picked) <= set(words)
    assert corpus_keywords("The cat.", rng, k=3) is None  # too few keywords: the paragraph is skipped
