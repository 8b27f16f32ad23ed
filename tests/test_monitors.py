"""Drift figures and limits (synpo.monitors) on a hand-made run directory, and how the report shows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synpo.io import write_json, write_jsonl
from synpo.monitors import crossed, drift
from synpo.recipe import MonitorsConfig


def toy_round(run_dir: Path, t: int, outputs: list[str], exact_match: float) -> None:
    d = run_dir / f"round_{t:02d}" / "eval" / "toy"
    write_jsonl(d / "outputs.jsonl", [{"id": str(i), "output": o} for i, o in enumerate(outputs)])
    write_json(d / "metrics.json", {"overall": {"exact_match": exact_match, "score": exact_match,
                                                "win_rate": exact_match / 2, "n": len(outputs)}})


def pair(chosen: str, rejected: str) -> dict:
    return {"id": "x", "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    toy_round(tmp_path, 0, ["abcd", "abcdef"], 0.5)                      # 5 chars on average
    toy_round(tmp_path, 1, ["a b c a b c a b c a b c", "xy"], 0.4)     # 12.5 chars, half its 3-grams repeat
    write_jsonl(tmp_path / "round_01" / "pairs.jsonl", [pair("long answer!", "short"), pair("abc", "abcd")])
    return tmp_path


def test_drift_figures(run_dir):
    figures = drift(run_dir, 1, ["toy"])
    toy = figures["suites"]["toy"]
    assert toy["mean_chars"] == 12.5 and toy["length_growth"] == 2.5
    assert toy["repetition"] == pytest.approx((1 - 3 / 10) / 2, abs=1e-4)  # 10 trigrams, 3 distinct; "xy" has none
    assert toy["headline"] == {"metric": "exact_match", "value": 0.4, "change": -0.1}
    assert figures["D"] == {"pairs": 2, "chosen_chars": 7.5, "rejected_chars": 4.5,
                            "chosen_rejected_length": round(7.5 / 4.5, 4)}
    assert drift(run_dir, 0, ["toy"])["suites"]["toy"]["length_growth"] == 1.0


@pytest.mark.parametrize(("limits", "expected"), [
    ({}, []),
    ({"max_length_growth": 2.5}, []),                       # equal to the limit: not crossed
    ({"max_length_growth": 2.0}, ["max_length_growth"]),
    ({"max_repetition": 0.3}, ["max_repetition"]),
    ({"max_headline_drop": 0.05}, ["max_headline_drop"]),
    ({"max_headline_drop": 0.2}, []),
    ({"max_chosen_rejected_length": 1.5}, ["max_chosen_rejected_length"]),
    ({"max_length_growth": 1.0, "max_headline_drop": 0.0}, ["max_length_growth", "max_headline_drop"]),
])
def test_limits(run_dir, limits, expected):
    hits = crossed(drift(run_dir, 1, ["toy"]), MonitorsConfig(**limits))
    assert [h["monitor"] for h in hits] == expected
    for h in hits:
        assert h["message"].startswith(f"monitors.{h['monitor']}: ") and h["message"].endswith("after round 1")


def test_length_message_names_the_figures(run_dir):
    (hit,) = crossed(drift(run_dir, 1, ["toy"]), MonitorsConfig(max_length_growth=1.0))
    assert hit["message"] == ("monitors.max_length_growth: toy mean answer length 12.5 chars is 2.500x round 0's "
                              "(limit 1.0x) after round 1")


def test_lc_wr_gap_of_alpaca_eval(tmp_path):
    for t, (lc, wr) in enumerate([(10.0, 10.0), (12.0, 20.0)]):
        d = tmp_path / f"round_{t:02d}" / "eval" / "alpaca_eval"
        write_json(d / "model_outputs.json", [{"output": "x" * (10 + 10 * t)}])
        write_json(d / "metrics.json", {"headline": {"lc_win_rate": lc, "win_rate": wr}})
    figures = drift(tmp_path, 1, ["alpaca_eval"])
    assert figures["suites"]["alpaca_eval"]["lc_wr_gap"] == -8.0
    assert figures["suites"]["alpaca_eval"]["headline"]["change"] == 2.0
    assert [h["monitor"] for h in crossed(figures, MonitorsConfig(max_lc_wr_gap=5))] == ["max_lc_wr_gap"]
    assert crossed(figures, MonitorsConfig(max_lc_wr_gap=9)) == []


def test_report_shows_drift_seconds_and_a_stop(run_dir):
    from synpo.report import write_report

    write_json(run_dir / "round_01" / "drift.json", drift(run_dir, 1, ["toy"]))
    write_jsonl(run_dir / "metrics.jsonl", [{"round": 0, "suite": "toy", "metrics": {"exact_match": 0.5}},
                                            {"round": 1, "suite": "toy", "metrics": {"exact_match": 0.4}}])
    stages = {"round_00/eval/toy": 3.0, "prompt_generator": 40.0, "round_01/prompts": 5.5, "round_01/policy": 20.25,
              "round_01/eval/toy": 3.5}
    write_json(run_dir / "state.json", {"stages": {k: {"fingerprint": "f", "summary": {"seconds": v}, "finished": 0}
                                                   for k, v in stages.items()}})
    text = write_report(run_dir).read_text()
    assert "| round | eval/toy | prompt_generator | prompts | policy | total |" in text
    assert "| round 1 | 3.5 | - | 5.5 | 20.2 | 29.2 |" in text or "| round 1 | 3.5 | - | 5.5 | 20.3 | 29.3 |" in text
    assert "| once | - | 40.0 | - | - | 40.0 |" in text
    assert "| 1 | toy | 12.50 | 2.50 | 0.3500 | -0.1000 | - | 1.67 |" in text
    assert "STOPPED" not in text
    hits = crossed(drift(run_dir, 1, ["toy"]), MonitorsConfig(max_length_growth=2.0))
    write_json(run_dir / "monitors_stop.json", {"round": 1, "crossed": hits, "limits": {}})
    text = write_report(run_dir).read_text()
    assert "**STOPPED BY A MONITOR after round 1: monitors.max_length_growth: toy mean answer length" in text
    assert "STOPPED BY A MONITOR" in (run_dir / "report.html").read_text()
    assert json.loads((run_dir / "monitors_stop.json").read_text())["round"] == 1
