"""The public evaluation sets: where they are read from, and how they are loaded and subsampled.

Each file is looked up in this order (the first that exists wins):
  1. the data directory `eval.data_dir` (`--data-dir`), when it is set;
  2. the copies shipped inside synpo (`synpo/evals/data`, Apache-2.0: Arena-Hard v0.1,
     MT-Bench and IFEval; see SOURCES.md there).
AlpacaEval's set is CC BY-NC 4.0 and not shipped: it must be in the data directory.
Nothing else is searched: the same recipe reads the same files wherever synpo is installed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from synpo.errors import UserError

PACKAGED = Path(__file__).resolve().parent / "data"

FILES = {
    "alpaca_eval": {"reference": "alpaca_eval/gpt4_1106_preview_model_outputs.json"},
    "arena_hard": {"questions": "arena_hard/v0.1/question.jsonl",
                   "baseline": "arena_hard/v0.1/model_answer/gpt-4-0314.jsonl"},
    "mt_bench": {"questions": "mt_bench/question.jsonl",
                 "references": "mt_bench/reference_answer/gpt-4.jsonl"},
    "ifeval": {"prompts": "ifeval/input_data.jsonl"},
}
HOW_TO_GET = {
    "alpaca_eval": "copy results/gpt4_1106_preview/model_outputs.json of github.com/tatsu-lab/alpaca_eval "
                   "(CC BY-NC 4.0, not shipped with synpo) to "
                   "DATA_DIR/alpaca_eval/gpt4_1106_preview_model_outputs.json and set eval.data_dir=DATA_DIR",
}
ALPACA_REFERENCE_GENERATOR = "gpt4_1106_preview"
ARENA_BASELINE = "gpt-4-0314"


def search_dirs(data_dir: str | None) -> list[Path]:
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise UserError(f"eval.data_dir: directory does not exist: {data_dir}")
        return list(dict.fromkeys([Path(data_dir).resolve(), PACKAGED]))
    return [PACKAGED]


def find(suite: str, key: str, data_dir: str | None) -> Path:
    relative = FILES[suite][key]
    dirs = search_dirs(data_dir)
    for d in dirs:
        if (d / relative).is_file():
            return d / relative
    hint = HOW_TO_GET.get(suite, "set eval.data_dir to a directory holding it")
    raise UserError(f"eval.data_dir: {relative} not found in {', '.join(map(str, dirs))}; {hint}")


def _read_jsonl(path: Path) -> list[dict]:
    from synpo.io import read_jsonl

    try:
        return read_jsonl(path)
    except ValueError as e:
        raise UserError(str(e)) from None


def _need(path: Path, rows: list[dict], fields: list[str]) -> None:
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise UserError(f"{path}: record {i + 1} lacks field(s) {', '.join(missing)}")


def load_alpaca_eval(data_dir: str | None) -> list[dict]:
    """The 805 instructions with the reference outputs: {id, instruction, reference, dataset}."""
    path = find("alpaca_eval", "reference", data_dir)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON list of {{instruction, output, ...}} records")
    _need(path, rows, ["instruction", "output"])
    return [{"id": f"alpaca_eval-{i:03d}", "index": i, "instruction": r["instruction"], "reference": r["output"],
             "reference_generator": r.get("generator", ALPACA_REFERENCE_GENERATOR),
             "dataset": r.get("dataset", "")} for i, r in enumerate(rows)]


def load_arena_hard(data_dir: str | None) -> list[dict]:
    """The 500 v0.1 questions with the gpt-4-0314 answers: {id, uid, category, cluster, prompt, baseline}."""
    qpath, apath = find("arena_hard", "questions", data_dir), find("arena_hard", "baseline", data_dir)
    questions, answers = _read_jsonl(qpath), _read_jsonl(apath)
    _need(qpath, questions, ["uid", "prompt"])
    _need(apath, answers, ["uid", "messages"])
    baseline = {a["uid"]: _assistant_text(a) for a in answers}
    missing = [q["uid"] for q in questions if q["uid"] not in baseline]
    if missing:
        raise UserError(f"{apath}: no baseline answer for {len(missing)} question(s), e.g. uid {missing[0]}")
    return [{"id": q["uid"], "uid": q["uid"], "category": q.get("category", ""), "cluster": q.get("cluster", ""),
             "prompt": q["prompt"], "baseline": baseline[q["uid"]]} for q in questions]


def _assistant_text(answer: dict) -> str:
    """The baseline's answer: the last assistant message (its content is {"answer": ...} in v0.1 files)."""
    content = [m for m in answer["messages"] if m.get("role") == "assistant"][-1]["content"]
    return content["answer"] if isinstance(content, dict) else content


def load_mt_bench(data_dir: str | None) -> list[dict]:
    """The 80 questions: {id, question_id, category, turns[2], references (list or None)}."""
    qpath, rpath = find("mt_bench", "questions", data_dir), find("mt_bench", "references", data_dir)
    questions, refs = _read_jsonl(qpath), _read_jsonl(rpath)
    _need(qpath, questions, ["question_id", "category", "turns"])
    references = {r["question_id"]: r["choices"][0]["turns"] for r in refs}
    return [{"id": f"mt_bench-{q['question_id']}", "question_id": q["question_id"], "category": q["category"],
             "turns": q["turns"], "references": references.get(q["question_id"])} for q in questions]


def load_ifeval(data_dir: str | None) -> list[dict]:
    """The 541 IFEval prompts: {id, key, prompt, instruction_id_list, kwargs} (input_data.jsonl's fields)."""
    path = find("ifeval", "prompts", data_dir)
    rows = _read_jsonl(path)
    _need(path, rows, ["key", "prompt", "instruction_id_list", "kwargs"])
    return [{"id": f"ifeval-{r['key']}", **r} for r in rows]


LOADERS = {"alpaca_eval": load_alpaca_eval, "arena_hard": load_arena_hard, "mt_bench": load_mt_bench,
           "ifeval": load_ifeval}


def load_suite(suite: str, data_dir: str | None, limit: int | None = None, seed: int = 0) -> list[dict]:
    """A suite's items: all of them, or a fixed-seed subsample of `limit` (kept in file order)."""
    return subsample(LOADERS[suite](data_dir), limit, seed)


def subsample(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(random.Random(f"{seed}:eval-subsample").sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def suite_prompts(suite: str, data_dir: str | None) -> list[str]:
    """Every user prompt of a suite (all turns), for decontaminating synthetic prompts."""
    rows = LOADERS[suite](data_dir)
    if suite == "alpaca_eval":
        return [r["instruction"] for r in rows]
    if suite in ("arena_hard", "ifeval"):
        return [r["prompt"] for r in rows]
    return [turn for r in rows for turn in r["turns"]]
