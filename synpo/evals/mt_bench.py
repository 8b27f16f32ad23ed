"""MT-Bench: two-turn questions, each turn graded 1-10 by the judge (FastChat's single-answer mode).

The model answers turn 1, then turn 2 with its own first answer in the conversation, at
FastChat's temperature for the question's category (gen_model_answer.py's temperature_config:
writing and roleplay 0.7, stem and humanities 0.1, extraction, math, coding and reasoning 0,
any other category 0.7); eval.sampling gives the rest (top_p, max_new_tokens). Each
turn is graded with FastChat's official prompts (prompts/mt_bench_judge_prompts.jsonl):
`single-v1` for turn 1 and `single-v1-multi-turn` for turn 2, or their `-math-` variants with
GPT-4's reference answers for the math, reasoning and coding categories. The rating is read
from `[[7]]` (or `[7]`); a reply without one, or outside 1-10, is unparseable and counted.
Metrics: the mean rating of turn 1, of turn 2, overall (FastChat's score) and per category.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from functools import cache
from pathlib import Path

from synpo.engines.base import Request
from synpo.evals.datasets import load_suite
from synpo.evals.inputs import SuiteInputs
from synpo.evals.judge import Judge, Tally, generate_answers, suite_max_tokens
from synpo.evals.verdicts import parse_rating
from synpo.io import write_jsonl

JUDGE_MAX_TOKENS = 2048  # FastChat's judge setting
# FastChat's per-category answer temperatures (fastchat/llm_judge/common.py temperature_config)
TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
DEFAULT_TEMPERATURE = 0.7  # gen_model_answer.py's value for a category outside the table
NEED_REF_CATS = ("math", "reasoning", "coding")


@cache
def judge_prompts() -> dict[str, dict]:
    from synpo.templates import PROMPTS_DIR

    path = PROMPTS_DIR / "mt_bench_judge_prompts.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["name"]: r for r in rows}


def run(inputs: SuiteInputs, engine, out_dir: Path, work: Path, make_judge) -> dict:
    cfg, generator = inputs.eval, inputs.model_name
    rows = load_suite("mt_bench", cfg.data_dir, cfg.limit, inputs.seed)
    first = answer_by_temperature(engine, rows, [[{"role": "user", "content": r["turns"][0]}] for r in rows],
                                  inputs, work / "turn1", "t1")
    second = answer_by_temperature(engine, rows, [[{"role": "user", "content": r["turns"][0]},
                                                   {"role": "assistant", "content": a1},
                                                   {"role": "user", "content": r["turns"][1]}]
                                                  for r, a1 in zip(rows, first)], inputs, work / "turn2", "t2")
    now = time.time()
    write_jsonl(out_dir / "model_answer.jsonl", (
        {"question_id": r["question_id"], "answer_id": f"{generator}-{r['question_id']}", "model_id": generator,
         "choices": [{"index": 0, "turns": [a1, a2]}], "tstamp": now} for r, a1, a2 in zip(rows, first, second)))
    judge = make_judge()
    try:
        judgments, tally = grade(judge, rows, first, second, generator, suite_max_tokens(cfg, JUDGE_MAX_TOKENS))
    finally:
        judge.close()
    write_jsonl(out_dir / "model_judgment.jsonl", judgments)
    tally.check(cfg.max_failed_judgments, "mt_bench")
    return metrics_from(judgments, tally, judge.name)


def temperature(category: str) -> float:
    return TEMPERATURES.get(category, DEFAULT_TEMPERATURE)


def answer_by_temperature(engine, rows: list[dict], conversations: list[list[dict]], inputs: SuiteInputs,
                          shard_dir: Path, turn: str) -> list[str]:
    """One turn's answers, each question sampled at its category's temperature (a batch per temperature)."""
    answers: dict[int, str] = {}
    for t in sorted({temperature(r["category"]) for r in rows}):
        picked = [i for i, r in enumerate(rows) if temperature(r["category"]) == t]
        texts = generate_answers(engine, [Request(f"{rows[i]['id']}-{turn}", conversations[i]) for i in picked],
                                 inputs, shard_dir / f"temperature-{t:g}", desc=f"mt_bench: {turn} (T={t:g})",
                                 temperature=t)
        answers.update(zip(picked, texts))
    return [answers[i] for i in range(len(rows))]


def judge_messages(row: dict, turn: int, a1: str, a2: str) -> tuple[str, list[dict]]:
    """(prompt name, messages) grading `turn` (1 or 2) of one question, as FastChat builds them."""
    math = row["category"] in NEED_REF_CATS and row["references"] is not None
    name = ("single-math-v1" if math else "single-v1") + ("-multi-turn" if turn == 2 else "")
    prompt = judge_prompts()[name]
    q = row["turns"]
    if turn == 1:
        values = {"question": q[0], "answer": a1}
    else:
        values = {"question_1": q[0], "question_2": q[1], "answer_1": a1, "answer_2": a2}
    if math:
        values.update(ref_answer_1=row["references"][0], ref_answer_2=row["references"][1])
    user = prompt["prompt_template"].format(**values)
    return name, [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


def grade(judge: Judge, rows: list[dict], first: list[str], second: list[str], generator: str,
          max_tokens: int) -> tuple[list[dict], Tally]:
    items = []
    for r, a1, a2 in zip(rows, first, second):
        for turn in (1, 2):
            name, messages = judge_messages(r, turn, a1, a2)
            items.append((r, turn, name, messages))
    replies = judge.ask([(f"{r['id']}-t{turn}", messages) for r, turn, _, messages in items], max_tokens,
                        desc="mt_bench: judge")
    tally = Tally()
    judgments = []
    now = time.time()
    for (r, turn, name, messages), reply in zip(items, replies):
        rating = parse_rating(reply.text)
        status = tally.add(reply, rating)
        judgments.append({"question_id": r["question_id"], "category": r["category"], "model": generator,
                          "judge": [judge.name, name], "user_prompt": messages[1]["content"],
                          "judgment": reply.text, "score": rating, "turn": turn, "status": status,
                          "error": reply.error, "tstamp": now})
    return judgments, tally


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def metrics_from(judgments: list[dict], tally: Tally, judge_name: str) -> dict:
    rated = [j for j in judgments if j["score"] is not None]
    by_category = defaultdict(list)
    for j in rated:
        by_category[j["category"]].append(j["score"])
    metrics = {
        "score": _mean([j["score"] for j in rated]),
        "turn_1": _mean([j["score"] for j in rated if j["turn"] == 1]),
        "turn_2": _mean([j["score"] for j in rated if j["turn"] == 2]),
        "categories": {c: _mean(v) for c, v in sorted(by_category.items())},
        "n_questions": len({j["question_id"] for j in judgments}), "n_rated": len(rated),
        "answer_temperatures": "FastChat's per category",
        "judge": judge_name, **tally.metrics(),
    }
    headline = {"score": metrics["score"], "turn_1": metrics["turn_1"], "turn_2": metrics["turn_2"],
                "judge_unparseable": metrics["judge_unparseable"], "judge_failed": metrics["judge_failed"]}
    metrics["headline"] = {k: v for k, v in headline.items() if v is not None}
    return metrics
