"""The run report: report.md (and report.html, plots) from what the run directory holds."""

from __future__ import annotations

from pathlib import Path

from synpo.io import read_jsonl, write_text


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    keys = []
    for r in rows:
        keys += [(r["suite"], k) for k in r["metrics"] if (r["suite"], k) not in keys]
    lines = [f"# synpo run: {run_dir.name}", "", "| round | " + " | ".join(f"{s} {k}" for s, k in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    by_round: dict[int, dict] = {}
    for r in rows:
        by_round.setdefault(r["round"], {}).update({(r["suite"], k): v for k, v in r["metrics"].items()})
    for t, values in sorted(by_round.items()):
        lines.append(f"| {t} | " + " | ".join(f"{values.get(k, float('nan')):.3f}" for k in keys) + " |")
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
