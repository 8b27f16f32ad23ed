"""Arena-Hard v0.1: the model against gpt-4-0314's answers, judged twice with positions swapped.

As arena-hard-auto v0.1 does: the 500 questions (or a fixed-seed subsample), the model's
answers (written in arena-hard's `model_answer` format), two games per question with the
official judge prompt at temperature 0 (game 1: A = baseline, B = model; game 2: swapped). A
reply without any `[[...]]` label gets one follow-up turn asking the judge to finish with a
verdict; a reply with several different labels, or a label outside the ten known forms, is
unparseable. Each game is a battle (a strong verdict counts three times); Bradley-Terry scores
give the model's win rate against the baseline and a 95 % bootstrap interval
(synpo.evals.stats). Unparseable and failed games are counted and left out of the battles.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from synpo.engines.base import Request
from synpo.evals import stats
from synpo.evals.datasets import ARENA_BASELINE, load_suite
from synpo.evals.inputs import SuiteInputs
from synpo.evals.judge import Judge, Tally, generate_answers, suite_max_tokens
from synpo.evals.verdicts import arena_advantage, parse_arena_hard
from synpo.io import write_jsonl
from synpo.templates import render

JUDGE_MAX_TOKENS = 4096  # arena-hard-auto v0.1's judge setting
CONTINUE = "continue your judgment and finish by outputting a final verdict label"


def run(inputs: SuiteInputs, engine, out_dir: Path, work: Path, make_judge) -> dict:
    cfg, generator = inputs.eval, inputs.model_name
    rows = load_suite("arena_hard", cfg.data_dir, cfg.limit, inputs.seed)
    requests = [Request(r["uid"], [{"role": "user", "content": r["prompt"]}]) for r in rows]
    answers = generate_answers(engine, requests, inputs, work / "answers", desc="arena_hard: answers")
    now = time.time()
    write_jsonl(out_dir / "model_answer.jsonl", (
        {"uid": r["uid"], "ans_id": f"{generator}-{r['uid']}", "model": generator,
         "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": {"answer": a}}],
         "tstamp": now} for r, a in zip(rows, answers)))
    judge = make_judge()
    try:
        judgments, tally = judge_games(judge, rows, answers, generator, suite_max_tokens(cfg, JUDGE_MAX_TOKENS))
    finally:
        judge.close()
    write_jsonl(out_dir / "model_judgment.jsonl", judgments)
    tally.check(cfg.max_failed_judgments, "arena_hard")
    return metrics_from(judgments, tally, generator, judge.name, cfg.bootstrap_rounds, inputs.seed,
                        answer_chars=[len(a) for a in answers])


def _games(row: dict, answer: str) -> list[tuple[str, str]]:
    """(answer_1, answer_2) of game 1 (baseline first) and game 2 (model first)."""
    return [(row["baseline"], answer), (answer, row["baseline"])]


def judge_games(judge: Judge, rows: list[dict], answers: list[str], generator: str,
                max_tokens: int) -> tuple[list[dict], Tally]:
    system = render("judge_arena_hard_system")
    conversations = []
    for r, answer in zip(rows, answers):
        for g, (a1, a2) in enumerate(_games(r, answer)):
            user = render("judge_arena_hard", question_1=r["prompt"], answer_1=a1, answer_2=a2)
            conversations.append((f"{r['uid']}-g{g + 1}", [{"role": "system", "content": system},
                                                           {"role": "user", "content": user}]))
    first = judge.ask(conversations, max_tokens, desc="arena_hard: judge")
    # arena-hard-auto's second attempt: no label at all -> ask the judge to finish its verdict
    again = [i for i, reply in enumerate(first) if reply.text is not None and parse_arena_hard(reply.text)[1]]
    follow_ups = judge.ask([(f"{conversations[i][0]}-continue",
                             [*conversations[i][1], {"role": "assistant", "content": first[i].text},
                              {"role": "user", "content": CONTINUE}]) for i in again],
                           max_tokens, desc="arena_hard: judge (continue)") if again else []
    second = dict(zip(again, follow_ups))

    tally = Tally()
    judgments = []
    for k, r in enumerate(rows):
        games = []
        for g in range(2):
            i = 2 * k + g
            reply = first[i]
            text, error, requests = reply.text, reply.error, 1
            if i in second:
                requests = 2
                follow = second[i]
                text = None if follow.text is None else f"{reply.text}\n{follow.text}"
                error = follow.error
            label = parse_arena_hard(text)[0] if text is not None else None
            status = tally.add(type(reply)(reply.id, text, error), label, requests=requests)
            games.append({"user_prompt": conversations[i][1][1]["content"], "judgment": text, "score": label,
                          "status": status, "error": error})
        judgments.append({"uid": r["uid"], "question_id": r["uid"], "category": r["category"], "model": generator,
                          "baseline": ARENA_BASELINE, "judge": judge.name, "games": games})
    return judgments, tally


def battles_from(judgments: list[dict], generator: str) -> list[tuple[str, str, str]]:
    """(model, baseline, winner) battles; a strong verdict is three battles (arena-hard-auto v0.1)."""
    battles = []
    for j in judgments:
        for g, game in enumerate(j["games"]):
            if game["score"] is None:
                continue
            advantage = arena_advantage(game["score"])  # of assistant A
            model_advantage = -advantage if g == 0 else advantage  # game 1: A = baseline
            winner = "tie" if model_advantage == 0 else ("model_a" if model_advantage > 0 else "model_b")
            weight = stats.STRONG_WEIGHT if abs(model_advantage) == 2 else 1
            battles += [(generator, ARENA_BASELINE, winner)] * weight
    return battles


def metrics_from(judgments: list[dict], tally: Tally, generator: str, judge_name: str, rounds: int, seed: int,
                 answer_chars: list[int]) -> dict:
    battles = battles_from(judgments, generator)
    score = stats.arena_hard_score(battles, generator, ARENA_BASELINE, rounds=rounds)  # show_result.py's seed 42
    labels = Counter(game["score"] for j in judgments for game in j["games"] if game["score"] is not None)
    metrics = {
        "win_rate": score["score"], "ci_lower": score["ci_lower"], "ci_upper": score["ci_upper"],
        "ci": None if score["score"] is None else
        f"(-{score['score'] - score['ci_lower']:.1f} / +{score['ci_upper'] - score['score']:.1f})",
        "elo": score["elo"], "battles": score["battles"], "bootstrap_rounds": rounds,
        "bootstrap_seed": stats.BOOTSTRAP_SEED,
        "labels": dict(sorted(labels.items())), "n_questions": len(judgments),
        "avg_answer_chars": sum(answer_chars) / max(len(answer_chars), 1),
        "baseline": ARENA_BASELINE, "judge": judge_name, **tally.metrics(),
    }
    headline = {"win_rate": metrics["win_rate"], "ci_lower": metrics["ci_lower"], "ci_upper": metrics["ci_upper"],
                "judge_unparseable": metrics["judge_unparseable"], "judge_failed": metrics["judge_failed"]}
    metrics["headline"] = {k: v for k, v in headline.items() if v is not None}
    return metrics
