"""Decontamination: drop prompts that are near-copies of evaluation prompts.

A prompt is contaminated by an evaluation set when, after normalisation (lower case; an
apostrophe inside a word dropped; other punctuation splits words), either
- it is a near-duplicate of an evaluation prompt: rapidfuzz's `fuzz.ratio` (the normalised Indel
  similarity) is at least `similarity` (default 0.8) between the two texts with every space and
  punctuation mark removed (so "First-Order" = "first order" = "firstorder"), or between their
  word sequences (one word changed in a five-word prompt leaves 0.8). Case, punctuation and a
  changed word leave a copy well above it; two different prompts on one topic stay below.
  Only the evaluation prompts that share at least half of the smaller prompt's distinctive words
  are compared (words in at most 2 % of the evaluation prompts, or in at most 10; a word joined
  across punctuation counts too), found by one sparse matrix product, so 50k prompts against
  ~1,400 evaluation prompts take seconds; or
- it copies a passage: at least `ngram` words long and more than `ngram_threshold` of its word
  n-grams occur in evaluation prompts (a long evaluation prompt pasted inside a longer prompt).

`Decontaminator(eval_prompts)(prompts)` gives one reason per prompt ("near_duplicate",
"copied_passage" or None); the prompt stage of the loop and `synpo decontaminate` use it.
scripts/bench_decontamination.py measures what it catches and what it costs.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from synpo.errors import UserError

SIMILARITY = 0.8
NGRAM, NGRAM_THRESHOLD = 13, 0.5
# words in more than this share (and more than COMMON_MIN) of the evaluation prompts are not distinctive
COMMON_SHARE, COMMON_MIN = 0.02, 10
CHUNK = 10_000  # prompts per sparse product (bounds its memory)


APOSTROPHE = re.compile(r"(?<=\w)['’](?=\w)")
PUNCTUATION = re.compile(r"[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words; an apostrophe inside a word is dropped (don't = dont), other punctuation splits."""
    return PUNCTUATION.sub(" ", APOSTROPHE.sub("", text.lower())).split()


def keys(text: str, tokens: list[str]) -> set[str]:
    """The words a prompt is found by: split at punctuation and, as a copy with its punctuation
    deleted would have them, joined across it ("first-order" gives first, order and firstorder)."""
    return set(tokens) | set(PUNCTUATION.sub("", text.lower()).split())


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


class Decontaminator:
    def __init__(self, eval_prompts: list[str], similarity: float = SIMILARITY, ngram: int = NGRAM,
                 ngram_threshold: float = NGRAM_THRESHOLD):
        from scipy import sparse

        self.similarity, self.ngram, self.ngram_threshold = similarity, ngram, ngram_threshold
        self._sparse = sparse
        self.tokens = tokens = [words(p) for p in eval_prompts]
        self.squashed = ["".join(t) for t in tokens]
        self.exact = set(self.squashed)
        found_by = [keys(p, t) for p, t in zip(eval_prompts, tokens)]
        frequency = Counter(w for k in found_by for w in k)
        self.common = {w for w, c in frequency.items() if c > max(COMMON_SHARE * len(tokens), COMMON_MIN)}
        self.vocabulary: dict[str, int] = {}
        for k in found_by:
            for w in sorted(k - self.common):
                self.vocabulary.setdefault(w, len(self.vocabulary))
        self.index = self._matrix(found_by).T.tocsc()  # vocabulary x evaluation prompts
        self.distinct = np.array([len(k - self.common) for k in found_by])
        self.passages = set().union(*(_ngrams(t, ngram) for t in tokens)) if tokens else set()

    def _matrix(self, found_by: list[set[str]]):
        """Prompts x distinctive words, 1 where the prompt has the word."""
        rows, cols = [], []
        for i, k in enumerate(found_by):
            ids = [self.vocabulary[w] for w in k if w in self.vocabulary]
            rows += [i] * len(ids)
            cols += ids
        return self._sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)),
                                       shape=(len(found_by), len(self.vocabulary)))

    def __call__(self, prompts: list[str]) -> list[str | None]:
        """Per prompt: "near_duplicate", "copied_passage" or None (clean)."""
        from rapidfuzz import fuzz

        reasons: list[str | None] = [None] * len(prompts)
        cutoff = 100 * self.similarity
        for start in range(0, len(prompts), CHUNK):
            chunk = prompts[start:start + CHUNK]
            tokens = [words(p) for p in chunk]
            squashed = ["".join(t) for t in tokens]
            found_by = [keys(p, t) for p, t in zip(chunk, tokens)]
            distinct = np.array([len(k - self.common) for k in found_by])
            shared = (self._matrix(found_by) @ self.index).tocoo()
            # candidates: at least half of the smaller prompt's distinctive words in common
            close = shared.data >= np.ceil(0.5 * np.minimum(distinct[shared.row], self.distinct[shared.col]))
            for i, j in zip(shared.row[close], shared.col[close]):
                if reasons[start + i] is None and (
                        fuzz.ratio(squashed[i], self.squashed[j], score_cutoff=cutoff)
                        or fuzz.ratio(tokens[i], self.tokens[j], score_cutoff=cutoff)):
                    reasons[start + i] = "near_duplicate"
            for i, t in enumerate(tokens):
                if reasons[start + i] is not None:
                    continue
                if squashed[i] in self.exact:  # prompts of common words only are never candidates above
                    reasons[start + i] = "near_duplicate"
                elif len(t) >= self.ngram:
                    grams = _ngrams(t, self.ngram)
                    if sum(g in self.passages for g in grams) / len(grams) > self.ngram_threshold:
                        reasons[start + i] = "copied_passage"
        return reasons


def decontaminate_file(path: str | Path, out: str | Path, suites: list[str], field: str = "prompt",
                       data_dir: str | None = None, similarity: float = SIMILARITY) -> dict:
    """Write the rows of a JSONL file whose `field` is not contaminated (every field kept, atomically)."""
    from synpo.evals import eval_prompts
    from synpo.io import read_jsonl, write_jsonl

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file does not exist")
    try:
        rows = read_jsonl(path)
    except ValueError as e:
        raise UserError(str(e)) from None
    texts = []
    for number, row in enumerate(rows, 1):
        value = row.get(field) if isinstance(row, dict) else None
        if isinstance(value, list):  # a conversation: its user turns
            value = "\n".join(m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "user")
        if not isinstance(value, str):
            raise UserError(f"{path}: record {number} has no text field {field!r} "
                            "(name the prompt's field with --field)")
        texts.append(value)
    against = eval_prompts(suites, data_dir)
    reasons = Decontaminator(against, similarity=similarity)(texts)
    write_jsonl(out, (row for row, reason in zip(rows, reasons) if reason is None))
    dropped = Counter(r for r in reasons if r is not None)
    return {"rows": len(rows), "kept": len(rows) - sum(dropped.values()), "dropped": sum(dropped.values()),
            "dropped_by_reason": dict(sorted(dropped.items())), "suites": suites,
            "evaluation_prompts": len(against)}
