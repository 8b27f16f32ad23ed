"""Reading a judge's verdict out of its reply, as each official harness does.

A parser returns the verdict or None; None is counted as an unparseable judgment by the
suite (never dropped silently).
"""

from __future__ import annotations

import math
import re

# ---- AlpacaEval: "m" (output_1) or "M" (output_2) -------------------------------------------
# alpaca_eval's regex_parser for the alpaca_eval_clf templates: `(?:^|\n) ?m$` / `(?:^|\n) ?M$`.
ALPACA = re.compile(r"(?:^|\n) ?([mM])$")


def parse_alpaca_eval(text: str | None) -> int | None:
    """1 when the output labelled m wins, 2 when M wins, None otherwise."""
    if not text:
        return None
    m = ALPACA.search(text.strip())
    return None if m is None else (1 if m.group(1) == "m" else 2)


def weighted_alpaca_eval(top_logprobs: list | None) -> float | None:
    """alpaca_eval's logprob_parser (numerator m, denominator m and M, not binarised) on the first
    generated token: 2 - P(m) / (P(m) + P(M)), in [1, 2] (1: the output labelled m wins). A token
    missing from the top list has probability 0; neither present: None (alpaca_eval's NaN)."""
    if not top_logprobs:
        return None
    found = {t["token"]: t["logprob"] for t in top_logprobs[0] if t["token"] in ("m", "M")}
    if not found:
        return None
    m, big_m = found.get("m", -math.inf), found.get("M", -math.inf)
    top = max(m, big_m)
    p_m = math.exp(m - top) / (math.exp(m - top) + math.exp(big_m - top))
    return 2 - p_m


# ---- Arena-Hard: [[A>>B]] ... [[B>>A]] ------------------------------------------------------
ARENA = re.compile(r"\[\[([AB<>=]+)\]\]")
# the five labels arena-hard-auto v0.1 counts (show_result.py gives any other weight 0), as the
# advantage of assistant A: 2 strong, 1 slight, 0 tie. `A<B`, `B=A`, ... are unparseable.
ARENA_LABELS = {"A>>B": 2, "A>B": 1, "A=B": 0, "B>A": -1, "B>>A": -2}


def parse_arena_hard(text: str | None) -> tuple[str | None, bool]:
    """(label, try_again): arena-hard-auto's get_score.

    No label at all: (None, True), the judge is asked to continue; one distinct label: (label, False);
    several different labels: (None, False). A label outside the five of ARENA_LABELS is unparseable.
    """
    matches = [m for m in ARENA.findall(text or "") if m != ""]
    if not matches:
        return None, True
    if len(set(matches)) > 1:
        return None, False
    label = matches[0]
    return (label if label in ARENA_LABELS else None), False


def arena_advantage(label: str) -> int:
    """Assistant A's advantage: +2 (A>>B), +1, 0, -1, -2 (B>>A)."""
    return ARENA_LABELS[label]


# ---- MT-Bench and the judge scorer: "Rating: [[7]]" ------------------------------------------
# FastChat's one_score_pattern and its backup. The judge scorer (synpo.scoring.judge) sends the
# same single-answer grading prompt and reads its replies with this same function.
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
RATING_SCALE = (1.0, 10.0)


def parse_rating(text: str | None) -> float | None:
    """The judge's 1-10 rating, read as FastChat reads it: the first `[[N]]`, else the first `[N]`.

    A missing rating is None, whatever the reason: no reply (a failed request), no rating in
    it, or one outside 1-10 (FastChat records -1 for no rating and keeps one outside 1-10).
    Callers keep None apart from every number: a judged suite counts it as unparseable and
    leaves it out of the scores; the judge scorer turns it into NaN, every scorer's "no score".
    """
    if not text:
        return None
    m = RATING.search(text) or RATING_BACKUP.search(text)
    if m is None:
        return None
    value = float(m.group(1))
    return value if RATING_SCALE[0] <= value <= RATING_SCALE[1] else None
