"""The run report: RUN_DIR/report.md, a self-contained RUN_DIR/report.html and RUN_DIR/plots/*.png.

Everything is read from what the run directory holds, so `synpo report RUN_DIR` can be run at
any time (the loop writes the report after every round):
  - metrics.jsonl and round_XX/eval/<suite>/metrics.json: every suite's numbers per round
    (round 0 = the starting model θ0), one PNG per metric across rounds, judge health counts;
  - round_XX/prompts_stats.json, pairs_stats.json and state.json's stage summaries: the data
    made each round (prompts generated / kept / why dropped, improver rows, pairs, score gaps,
    chosen vs rejected lengths);
  - round_XX/pairs.jsonl: a few example pairs per round.
The HTML embeds its CSS and its plots (base64 PNG): it can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import random
import re
import time
from pathlib import Path

from synpo.io import read_json, read_jsonl, write_text
from synpo.run import round_name

EXAMPLES_PER_ROUND = 2
EXAMPLE_CHARS = 600
# numbers drawn as error bars around another metric rather than plotted on their own
ERROR_BARS = {("alpaca_eval", "win_rate"): ("se", "win_rate_se"), ("arena_hard", "win_rate"): ("ci", "ci_lower")}
NOT_PLOTTED = re.compile(r"^(judge_|ci_|win_rate_se$)")


# ---- reading the run directory -------------------------------------------------------------------


def _json(path: Path):
    return read_json(path) if path.exists() else None


def _rounds(run_dir: Path) -> list[int]:
    return sorted(int(p.name[6:]) for p in run_dir.glob("round_*") if re.fullmatch(r"round_\d+", p.name))


def collect(run_dir: Path) -> dict:
    """Everything the report shows, as plain data."""
    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    suites: dict[str, dict[int, dict]] = {}
    for r in rows:
        suites.setdefault(r["suite"], {})[r["round"]] = r["metrics"]
    full = {s: {t: _json(run_dir / round_name(t) / "eval" / s / "metrics.json") or {} for t in by_round}
            for s, by_round in suites.items()}
    state = _json(run_dir / "state.json") or {"stages": {}}
    data = []
    for t in _rounds(run_dir):
        d = run_dir / round_name(t)
        summary = lambda stage, d=d: state["stages"].get(f"{d.name}/{stage}", {}).get("summary")  # noqa: B023
        entry = {"round": t, "prompts": _json(d / "prompts_stats.json"), "pairs": _json(d / "pairs_stats.json"),
                 "improver": summary("improver_data"), "refined": summary("refined"), "examples": []}
        if (d / "pairs.jsonl").exists():
            pairs = read_jsonl(d / "pairs.jsonl")
            entry["examples"] = random.Random(f"report:{t}").sample(pairs, min(EXAMPLES_PER_ROUND, len(pairs)))
        if any(entry[k] for k in ("prompts", "pairs", "improver", "examples")):
            data.append(entry)
    recipe = {}
    if (run_dir / "recipe.yaml").exists():
        import yaml

        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    return {"name": run_dir.name, "recipe": recipe, "suites": suites, "full": full, "data": data,
            "stages": state["stages"], "drift": [_json(run_dir / round_name(t) / "drift.json")
                                                 for t in _rounds(run_dir)],
            "stopped": _json(run_dir / "monitors_stop.json")}


def _metric_keys(by_round: dict[int, dict]) -> list[str]:
    keys: list[str] = []
    for metrics in by_round.values():
        keys += [k for k, v in metrics.items() if k not in keys and isinstance(v, int | float)]
    return keys


# ---- plots -------------------------------------------------------------------------------------


def make_plots(info: dict, plot_dir: Path) -> list[tuple[str, Path]]:
    """One PNG per (suite, metric) across rounds, and the data plot: [(title, path)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for suite, by_round in info["suites"].items():
        for key in _metric_keys(by_round):
            if NOT_PLOTTED.match(key):
                continue
            rounds = [t for t in sorted(by_round) if isinstance(by_round[t].get(key), int | float)]
            values = [by_round[t][key] for t in rounds]
            fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
            kind = ERROR_BARS.get((suite, key))
            if kind and kind[0] == "se":
                err = [by_round[t].get("win_rate_se") or 0 for t in rounds]
                ax.errorbar(rounds, values, yerr=err, marker="o", capsize=4, label=f"{key} ± SE")
            elif kind and kind[0] == "ci":
                low = [v - by_round[t].get("ci_lower", v) for t, v in zip(rounds, values)]
                high = [by_round[t].get("ci_upper", v) - v for t, v in zip(rounds, values)]
                ax.errorbar(rounds, values, yerr=[low, high], marker="o", capsize=4, label=f"{key}, 95% CI")
            else:
                ax.plot(rounds, values, marker="o", label=key)
            offset = (9, -3) if kind else (0, 7)  # beside an error bar, above a plain point
            for t, v in zip(rounds, values):
                ax.annotate(f"{v:.3g}" if abs(v) >= 1e-3 else "0", (t, v), textcoords="offset points", xytext=offset,
                            ha="left" if kind else "center", fontsize=8)
            ax.margins(x=0.08, y=0.18)  # room for the labels of the first, last and top points
            ax.set_title(f"{suite}: {key}")
            ax.set_xlabel("round (0 = starting model)")
            ax.set_xticks(sorted(by_round))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
            fig.tight_layout()
            path = plot_dir / f"{suite}__{key}.png"
            _save(fig, path)
            plt.close(fig)
            made.append((f"{suite}: {key}", path))
    data = [d for d in info["data"] if d["pairs"] or d["prompts"]]
    if data:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
        rounds = [d["round"] for d in data]
        for label, style, get in [("prompts kept", "o-", lambda d: (d["prompts"] or {}).get("kept")),
                                  ("pair candidates", "s--", lambda d: (d["pairs"] or {}).get("candidates")),
                                  ("pairs kept", "^-", lambda d: (d["pairs"] or {}).get("kept"))]:
            left.plot(rounds, [get(d) or 0 for d in data], style, label=label)  # candidates ~ prompts: dashed
        left.set_title("data per round")
        for label, key in [("chosen", "chosen_chars"), ("rejected", "rejected_chars")]:
            right.plot(rounds, [(d["pairs"] or {}).get(key) or 0 for d in data], marker="o", label=label)
        right.set_title("mean response length of kept pairs (chars)")
        for ax in (left, right):
            ax.set_xlabel("round")
            ax.set_xticks(rounds)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = plot_dir / "data.png"
        _save(fig, path)
        plt.close(fig)
        made.append(("data per round", path))
    return made


def _save(fig, path: Path) -> None:
    from synpo.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


# ---- tables (as lists of rows, rendered to Markdown and HTML) ----------------------------------------


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items()) or "-"
    return str(v)


def metric_tables(info: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    for suite, by_round in info["suites"].items():
        keys = _metric_keys(by_round)
        # lc_glm: which LC (builtin length_controlled_minimal vs the official backend's length_controlled_v1);
        # preferences: weighted by the judge's logprobs or hard verdicts
        extra = [k for k in ("ci", "lc_glm", "preferences", "judge")
                 if any(k in info["full"][suite].get(t, {}) for t in by_round)]
        rows = [[str(t), *[_fmt(by_round[t].get(k)) for k in keys],
                 *[_fmt(info["full"][suite].get(t, {}).get(k)) for k in extra]] for t in sorted(by_round)]
        tables.append((suite, ["round", *keys, *extra], rows))
    return tables


def judge_table(info: dict) -> tuple[list[str], list[list[str]]] | None:
    rows = []
    for suite, by_round in info["full"].items():
        for t, m in sorted(by_round.items()):
            if "judge_judgments" in m:
                rows.append([suite, str(t), _fmt(m.get("judge")), _fmt(m["judge_judgments"]),
                             _fmt(m.get("judge_requests")), _fmt(m.get("judge_ok")), _fmt(m.get("judge_unparseable")),
                             _fmt(m.get("judge_failed")), _fmt(m.get("judge_errors"))])
    header = ["suite", "round", "judge", "judgments", "requests", "ok", "unparseable", "failed", "errors"]
    return (header, rows) if rows else None


def data_tables(info: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    data = info["data"]
    tables = []
    # decontamination is always reported, also when it dropped nothing
    reasons = sorted({"contaminated"} | {k for d in data if d["prompts"] for k in d["prompts"].get("dropped", {})})
    rows = [[str(d["round"]), _fmt(d["prompts"].get("generated")), _fmt(d["prompts"].get("kept")),
             *[_fmt(d["prompts"].get("dropped", {}).get(k, 0)) for k in reasons]] for d in data if d["prompts"]]
    if rows:
        tables.append(("prompts (generated by G, kept after filtering, dropped by reason)",
                       ["round", "generated", "kept", *[f"dropped: {k}" for k in reasons]], rows))
    rows = [[str(d["round"]), *[_fmt(d["improver"].get(k)) for k in ("seed", "over_gap", "kept", "mean_gap")],
             _fmt((d["refined"] or {}).get("changed"))] for d in data if d["improver"]]
    if rows:
        tables.append(("improver data (seed rows where gold beats π_{t-1} by more than τ) and refinements",
                       ["round", "seed rows", "over gap", "kept", "mean gap", "refinements that changed"], rows))
    reasons = sorted({k for d in data if d["pairs"] for k in d["pairs"].get("dropped", {})})
    rows = [[str(d["round"]), _fmt(d["pairs"].get("candidates")), _fmt(d["pairs"].get("kept")),
             *[_fmt(d["pairs"].get("dropped", {}).get(k, 0)) for k in reasons],
             *[_fmt(d["pairs"].get(k)) for k in ("mean_gap_all", "mean_gap_kept", "chosen_chars", "rejected_chars")]]
            for d in data if d["pairs"]]
    if rows:
        tables.append(("preference pairs (score gap = score(chosen) - score(rejected))",
                       ["round", "candidates", "kept", *[f"dropped: {k}" for k in reasons], "mean gap (all)",
                        "mean gap (kept)", "chosen chars", "rejected chars"], rows))
    return tables


def seconds_table(info: dict) -> tuple[list[str], list[list[str]]] | None:
    """Seconds per stage per round (from state.json): where the time goes, and how it grows with D."""
    by_round: dict[str, dict[str, float]] = {}
    for key, record in info.get("stages", {}).items():
        where, stage = key.split("/", 1) if key.startswith("round_") else ("once", key)
        by_round.setdefault(where, {})[stage] = record.get("summary", {}).get("seconds")
    if not by_round:
        return None
    stages = list(dict.fromkeys(stage for stages in by_round.values() for stage in stages))
    rows = [[f"round {int(where[6:])}" if where.startswith("round_") else where,
             *[f"{v:.1f}" if (v := values.get(stage)) is not None else "-" for stage in stages],
             f"{sum(v or 0 for v in values.values()):.1f}"] for where, values in sorted(by_round.items())]
    return ["round", *stages, "total"], rows


def drift_table(info: dict) -> tuple[list[str], list[list[str]]] | None:
    """The drift figures of synpo.monitors per round and suite."""
    rows = []
    for figures in info.get("drift", []):
        if not figures:
            continue
        ratio = (figures.get("D") or {}).get("chosen_rejected_length")
        for suite, s in figures["suites"].items():
            rows.append([str(figures["round"]), suite, _fmt(s["mean_chars"]), _fmt(s.get("length_growth")),
                         _fmt(s["repetition"]), _fmt(s["headline"].get("change")), _fmt(s.get("lc_wr_gap")),
                         _fmt(ratio)])
    header = ["round", "suite", "mean answer chars", "× round 0", "repetition", "headline change", "LC - WR",
              "D chosen/rejected length"]
    return (header, rows) if rows else None


def stopped_lines(info: dict) -> list[str]:
    stop = info.get("stopped")
    if not stop:
        return []
    return [f"STOPPED BY A MONITOR after round {stop['round']}: " + "; ".join(h["message"] for h in stop["crossed"])
            + ". Raise the limit (recipe section monitors:) and rerun the same command to resume."]


def _text(message_list) -> str:
    if isinstance(message_list, list):
        return "\n".join(m.get("content", "") for m in message_list)
    return str(message_list)


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + f" … [{len(text) - EXAMPLE_CHARS} more chars]"


def examples(info: dict) -> list[dict]:
    out = []
    for d in info["data"]:
        for p in d["examples"]:
            out.append({"round": d["round"], "id": p.get("id", ""), "gap": p.get("gap"),
                        "prompt": _clip(_text(p.get("prompt"))), "chosen": _clip(_text(p.get("chosen"))),
                        "rejected": _clip(_text(p.get("rejected")))})
    return out


# ---- Markdown ----------------------------------------------------------------------------------


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows], ""]


def _intro(info: dict) -> list[str]:
    r = info["recipe"]
    bits = [f"recipe `{r.get('name', info['name'])}`"]
    if r:
        bits += [f"{r.get('rounds')} rounds planned", f"pairs: {r.get('pairs', {}).get('strategy')}",
                 f"loss: {r.get('train', {}).get('loss')}", f"suites: {', '.join(r.get('eval', {}).get('suites', []))}"]
    done = sorted({t for by_round in info["suites"].values() for t in by_round})
    bits.append(f"rounds evaluated: {', '.join(map(str, done)) or 'none yet'} (round 0 = the starting model)")
    return bits


def render_markdown(info: dict, plots: list[tuple[str, Path]], run_dir: Path) -> str:
    lines = [f"# synpo run: {info['name']}", "", "; ".join(_intro(info)) + ".", "",
             f"_written {time.strftime('%Y-%m-%d %H:%M:%S')}_", ""]
    lines += [f"**{line}**" for line in stopped_lines(info)] + ([""] if info.get("stopped") else [])
    lines += ["## Metrics by round", ""]
    tables = metric_tables(info)
    if not tables:
        lines += ["No suite has been evaluated yet.", ""]
    for suite, header, rows in tables:
        lines += [f"### {suite}", "", *_md_table(header, rows)]
    jt = judge_table(info)
    if jt:
        lines += ["### judge health (unparseable and failed judgments are counted, never dropped)", "",
                  *_md_table(*jt)]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{title}]({p.relative_to(run_dir).as_posix()})" for title, p in plots] + [""]
    dt = drift_table(info)
    if dt:
        lines += ["## Drift monitors", "", *[f"**{line}**\n" for line in stopped_lines(info)], *_md_table(*dt)]
    data = data_tables(info)
    if data:
        lines += ["## Data per round", ""]
        for title, header, rows in data:
            lines += [f"### {title}", "", *_md_table(header, rows)]
    st = seconds_table(info)
    if st:
        lines += ["## Seconds per stage", "", *_md_table(*st)]
    ex = examples(info)
    if ex:
        lines += ["## Example pairs", ""]
        for e in ex:
            lines += [f"**round {e['round']}, {e['id']}** (gap {_fmt(e['gap'])})", "", "prompt:", "", "````",
                      e["prompt"], "````", "", "chosen:", "", "````", e["chosen"], "````", "", "rejected:", "",
                      "````", e["rejected"], "````", ""]
    return "\n".join(lines) + "\n"


# ---- HTML --------------------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #4a6fa5; padding-bottom: .2em; }
h2 { color: #4a6fa5; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0 1.2em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #eef2f8; }
td:first-child, th:first-child { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots figure { margin: 0; border: 1px solid #ddd; padding: 4px; background: #fff; }
.plots figcaption { font-size: 12px; color: #555; text-align: center; }
.pair { border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; margin: 1em 0; background: #fafafa; }
.pair pre { white-space: pre-wrap; word-break: break-word; background: #fff; border: 1px solid #eee; padding: .5em;
            margin: .2em 0 .8em; font-size: 13px; }
.chosen { border-left: 4px solid #3c9a5f !important; }
.rejected { border-left: 4px solid #c0504d !important; }
.muted { color: #777; font-size: 13px; }
.stopped { color: #fff; background: #c0504d; padding: .5em 1em; border-radius: 4px; font-weight: bold; }
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(info: dict, plots: list[tuple[str, Path]]) -> str:
    esc = html.escape
    parts = [f"<h1>synpo run: {esc(info['name'])}</h1>", f"<p>{esc('; '.join(_intro(info)))}.</p>",
             f"<p class='muted'>written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
             *[f"<p class='stopped'>{esc(line)}</p>" for line in stopped_lines(info)], "<h2>Metrics by round</h2>"]
    tables = metric_tables(info)
    if not tables:
        parts.append("<p>No suite has been evaluated yet.</p>")
    for suite, header, rows in tables:
        parts += [f"<h3>{esc(suite)}</h3>", _html_table(header, rows)]
    jt = judge_table(info)
    if jt:
        parts += ["<h3>judge health</h3><p class='muted'>unparseable and failed judgments are counted, "
                  "never dropped</p>", _html_table(*jt)]
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        for title, path in plots:
            b64 = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{esc(title)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{esc(title)}</figcaption></figure>")
        parts.append("</div>")
    dt = drift_table(info)
    if dt:
        parts += ["<h2>Drift monitors</h2>", _html_table(*dt)]
    data = data_tables(info)
    if data:
        parts.append("<h2>Data per round</h2>")
        for title, header, rows in data:
            parts += [f"<h3>{esc(title)}</h3>", _html_table(header, rows)]
    st = seconds_table(info)
    if st:
        parts += ["<h2>Seconds per stage</h2>", _html_table(*st)]
    ex = examples(info)
    if ex:
        parts.append("<h2>Example pairs</h2>")
        for e in ex:
            parts.append(f"<div class='pair'><b>round {e['round']}, {esc(str(e['id']))}</b> "
                         f"<span class='muted'>gap {esc(_fmt(e['gap']))}</span>"
                         f"<div>prompt</div><pre>{esc(e['prompt'])}</pre>"
                         f"<div>chosen</div><pre class='chosen'>{esc(e['chosen'])}</pre>"
                         f"<div>rejected</div><pre class='rejected'>{esc(e['rejected'])}</pre></div>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>synpo run: {esc(info['name'])}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write report.md, report.html and plots/*.png for a run directory; returns report.md's path."""
    run_dir = Path(run_dir)
    info = collect(run_dir)
    plots = make_plots(info, run_dir / "plots")
    path = run_dir / "report.md"
    write_text(path, render_markdown(info, plots, run_dir))
    write_text(run_dir / "report.html", render_html(info, plots))
    return path
