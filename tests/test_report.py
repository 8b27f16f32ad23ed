"""The run report on a synthetic run directory: tables, plots, a self-contained HTML."""

import base64
import re
import subprocess
import sys

import yaml

from synpo.io import write_json, write_jsonl
from synpo.report import write_report

ROUNDS = 3


def synthetic_run(run_dir):
    """A run directory as the loop leaves it after ROUNDS rounds, with every suite evaluated."""
    write_json(run_dir / "state.json", {"stages": {
        f"round_{t:02d}/improver_data": {"fingerprint": "x", "summary": {"seed": 500, "over_gap": 100 - 10 * t,
                                                                          "kept": 100 - 10 * t, "mean_gap": 0.3}}
        for t in range(1, ROUNDS + 1)}})
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump({"name": "synthetic", "rounds": ROUNDS,
                                                         "pairs": {"strategy": "synpo"}, "train": {"loss": "simpo"},
                                                         "eval": {"suites": ["toy", "alpaca_eval", "arena_hard",
                                                                             "mt_bench"]}}))
    rows = []
    for t in range(ROUNDS + 1):
        d = run_dir / f"round_{t:02d}"
        suites = {
            "toy": {"exact_match": 0.2 + 0.1 * t, "score": 0.5 + 0.05 * t, "win_rate": 0.1 + 0.05 * t},
            "alpaca_eval": {"lc_win_rate": 5.0 + 7 * t, "win_rate": 3.0 + 8 * t, "win_rate_se": 0.8,
                            "judge_unparseable": t, "judge_failed": 0},
            "arena_hard": {"win_rate": 2.0 + 6 * t, "ci_lower": 1.0 + 6 * t, "ci_upper": 3.5 + 6 * t,
                           "judge_unparseable": 2 * t, "judge_failed": 0},
            "mt_bench": {"score": 4.0 + 0.5 * t, "turn_1": 4.5 + 0.5 * t, "turn_2": 3.5 + 0.5 * t,
                         "judge_unparseable": 0, "judge_failed": 1},
        }
        for suite, headline in suites.items():
            full = {**headline, "headline": headline}
            if suite != "toy":
                full.update(judge="judge-model", judge_judgments=100, judge_requests=104,
                            judge_ok=100 - headline["judge_unparseable"] - headline["judge_failed"],
                            judge_errors={"JudgeTimeout": headline["judge_failed"]} if headline["judge_failed"] else {})
            if suite == "arena_hard":
                full["ci"] = "(-1.0 / +1.5)"
            write_json(d / "eval" / suite / "metrics.json", full)
            rows.append({"round": t, "suite": suite, "metrics": headline})
        if t == 0:
            continue
        write_json(d / "prompts_stats.json", {"generated": 1200, "kept": 700 + 50 * t,
                                              "dropped": {"duplicate": 100, "invalid": 300 - 50 * t,
                                                          "contaminated": 100, "unparseable": 0}})
        write_json(d / "pairs_stats.json", {"candidates": 700, "kept": 400, "dropped": {"below_gap": 250,
                                                                                       "degenerate_empty": 50},
                                            "mean_gap_all": 0.2, "mean_gap_kept": 0.4, "chosen_chars": 40.0 + t,
                                            "rejected_chars": 30.0})
        write_jsonl(d / "pairs.jsonl", [{"id": f"r{t}-p{i:06d}",
                                         "prompt": [{"role": "user", "content": f"sort 3 1 {i}"}],
                                         "chosen": [{"role": "assistant", "content": f"1 3 {i} <b>&"}],
                                         "rejected": [{"role": "assistant", "content": "x" * 2000}], "gap": 0.5}
                                        for i in range(5)])
    write_jsonl(run_dir / "metrics.jsonl", rows)
    return run_dir


def test_report_tables_plots_and_self_contained_html(tmp_path):
    run = synthetic_run(tmp_path / "run")
    md_path = write_report(run)
    md = md_path.read_text()
    # a table per suite, one line per round 0..ROUNDS, with the suite's headline numbers
    for suite, column in [("toy", "exact_match"), ("alpaca_eval", "lc_win_rate"), ("arena_hard", "ci_upper"),
                          ("mt_bench", "turn_2")]:
        assert f"### {suite}" in md
        section = md.split(f"### {suite}")[1].split("###")[0]
        header = section.strip().splitlines()[0]
        assert column in header
        assert len([line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]) == ROUNDS + 1
    assert "| 3 | 26.00 | 27.00 | 0.8000 | 3 | 0 | judge-model |" in md  # alpaca round 3
    assert "(-1.0 / +1.5)" in md
    # data statistics, the judge health table and example pairs
    assert "dropped: contaminated" in md and "dropped: below_gap" in md and "rejected chars" in md
    assert "judge health" in md and "JudgeTimeout 1" in md
    assert md.count("**round ") == 2 * ROUNDS and "more chars]" in md
    # one PNG per plotted metric (error-bar and judge-count metrics are not plotted alone) and the data plot
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == sorted(["toy__exact_match.png", "toy__score.png", "toy__win_rate.png",
                           "alpaca_eval__lc_win_rate.png", "alpaca_eval__win_rate.png", "arena_hard__win_rate.png",
                           "mt_bench__score.png", "mt_bench__turn_1.png", "mt_bench__turn_2.png", "data.png"])
    for p in (run / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"(plots/{p.name})" in md
    # the HTML carries its CSS and every plot inline, and loads nothing from outside
    page = (run / "report.html").read_text()
    assert "<style>" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == len(pngs)
    assert all(base64.b64decode(b)[:4] == b"\x89PNG" for b in images)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page.split("<h2>Example pairs</h2>")[1].replace("<b>round", "")


def test_report_of_a_run_with_only_round_0(tmp_path):
    run = tmp_path / "run"
    write_json(run / "round_00" / "eval" / "toy" / "metrics.json", {"overall": {}})
    write_jsonl(run / "metrics.jsonl", [{"round": 0, "suite": "toy", "metrics": {"exact_match": 0.25}}])
    write_json(run / "state.json", {"stages": {}})
    md = write_report(run).read_text()
    assert "| 0 | 0.2500 |" in md and (run / "plots" / "toy__exact_match.png").exists()
    assert "Data per round" not in md


def test_synpo_report_cli(tmp_path):
    run = synthetic_run(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "synpo.cli", "report", str(run)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("report.md") and (run / "report.html").exists()
    proc = subprocess.run([sys.executable, "-m", "synpo.cli", "report", str(tmp_path / "nope")], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "not a synpo run directory" in proc.stderr
