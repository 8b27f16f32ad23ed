"""The judged suites end to end with --limit: the tiny model answers, a judge on loopback judges over real HTTP.

Most tests use a scripted judge server (tests/judge_server.py) whose verdicts the test can
recompute; one uses `transformers serve` running the tiny model as the judge (its replies are
mostly unreadable, and must all be counted).
"""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE, eval_data_dir
from judge_server import ScriptedJudge, alpaca_confidence, arena_label, arena_needs_continue, mt_rating, sha

from synpo.errors import UserError
from synpo.evals.datasets import load_suite
from synpo.io import read_json, read_jsonl
from synpo.iterate import evaluation
from synpo.recipe import load_recipe
from synpo.stages.evaluate import evaluate_suite, headline
from synpo.toy import TINY_MODEL

torch.set_num_threads(1)
LIMIT = 6


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    # per test, not at import: a module-level setting would silence the log lines other test files check
    monkeypatch.setenv("SYNPO_QUIET", "1")


def recipe_for(suite, judge_url, tmp_path, *extra, judge_model="scripted-judge", timeout=30):
    # timeout: far beyond a loopback answer even on a loaded machine, so only scripted faults time out
    judge = (f'{{base_url: "{judge_url}", model: "{judge_model}", concurrency: 4, max_retries: 1, '
             f'timeout: {timeout}, retry_backoff: 0.05, cache_dir: "{tmp_path / "judge_cache"}"}}')
    return load_recipe(TINY_RECIPE, [f"eval.suites=[{suite}]", f"eval.limit={LIMIT}", "eval.sampling.max_new_tokens=8",
                                     "engine.batch_size=8", "runtime.threads=1", f"eval.judge={judge}",
                                     f"eval.data_dir={eval_data_dir()}", *extra])


def evaluate(recipe, suite, tmp_path):
    out = tmp_path / "run" / "round_00" / "eval" / suite
    inputs = evaluation(recipe, suite, f"{recipe.name}-round_00")  # as the loop's round-0 stage has it
    return evaluate_suite(inputs, str(TINY_MODEL), out, tmp_path / "work" / suite), out


# ---- alpaca_eval ----------------------------------------------------------------------------------


def test_alpaca_eval_end_to_end_and_a_rerun_sends_nothing(tmp_path):
    with ScriptedJudge() as judge:
        recipe = recipe_for("alpaca_eval", judge.base_url, tmp_path)
        metrics, out = evaluate(recipe, "alpaca_eval", tmp_path)
        # the outputs in alpaca_eval's model_outputs.json format, beside the matching reference outputs
        model_outputs = json.loads((out / "model_outputs.json").read_text())
        references = json.loads((out / "reference_outputs.json").read_text())
        # the stage's subsample: drawn with the evaluation's seed (the same every round)
        rows = load_suite("alpaca_eval", eval_data_dir(), LIMIT, evaluation(recipe, "alpaca_eval", "").seed)
        assert [m["instruction"] for m in model_outputs] == [r["instruction"] for r in rows]
        assert [r["output"] for r in references] == [r["reference"] for r in rows]
        assert all(set(m) == {"instruction", "output", "generator", "dataset"} for m in model_outputs)
        assert {m["generator"] for m in model_outputs} == {"tiny-cpu-round_00"}
        # both orders occur, and each preference is the scripted judge's, weighted by its logprobs and
        # seen from the model's side
        annotations = read_jsonl(out / "annotations.jsonl")
        assert {a["is_swapped"] for a in annotations} == {True, False}
        for a in annotations:
            p = alpaca_confidence(a["output_1"], a["output_2"])
            assert a["preference"] == pytest.approx(1 + (p if sha(a["output_2"]) < sha(a["output_1"]) else 1 - p))
            assert a["raw_completion"] in ("m", "M") and a["status"] == "ok" and a["preference_kind"] == "weighted"
        wins = [a["preference"] - 1 for a in annotations]
        assert metrics["win_rate"] == pytest.approx(100 * sum(wins) / LIMIT)
        assert metrics["length_controlled_winrate"] is not None and metrics["lc_glm"] == "length_controlled_minimal"
        assert metrics["preferences"] == "weighted" and metrics["judge_weighted"] == LIMIT
        assert (metrics["judge_judgments"], metrics["judge_ok"], metrics["judge_unparseable"],
                metrics["judge_failed"]) == (LIMIT, LIMIT, 0, 0)
        assert read_json(out / "metrics.json") == metrics
        assert set(headline("alpaca_eval", metrics)) >= {"lc_win_rate_minimal", "win_rate", "win_rate_se"}
        assert len(judge.received) == LIMIT and set(judge.received.values()) == {1}
        # the same evaluation again: every judgment comes from the cache, the server sees nothing
        again, _ = evaluate(recipe, "alpaca_eval", tmp_path)
        assert sum(judge.received.values()) == LIMIT and again == metrics


def test_alpaca_eval_counts_malformed_verdicts(tmp_path):
    malformed = lambda messages: sha(messages[1]["content"])[0] in "0123456789"  # ~60 % of requests
    with ScriptedJudge(malformed=malformed) as judge:
        # unreadable verdicts are under the same cap as failed requests (default 0): a clear stop ...
        with pytest.raises(UserError, match=r"judgments have no verdict \(\d+ unparseable\)"):
            evaluate(recipe_for("alpaca_eval", judge.base_url, tmp_path), "alpaca_eval", tmp_path)
        # ... or, allowed, counted in the metrics
        metrics, out = evaluate(recipe_for("alpaca_eval", judge.base_url, tmp_path, "eval.max_failed_judgments=0.9"),
                                "alpaca_eval", tmp_path)
    annotations = read_jsonl(out / "annotations.jsonl")
    bad = [a for a in annotations if a["status"] == "unparseable"]
    assert 0 < len(bad) < LIMIT
    assert all(a["preference"] is None and a["raw_completion"].startswith("I think") for a in bad)
    assert metrics["judge_unparseable"] == len(bad) and metrics["judge_ok"] == LIMIT - len(bad)
    assert metrics["n_total"] == LIMIT - len(bad)  # left out of WR and LC, never dropped from the counts
    assert headline("alpaca_eval", metrics)["judge_unparseable"] == len(bad)


def test_judge_that_times_out(tmp_path):
    held = set()

    def slow(messages):  # about half of the requests; the judge holds them until the test ends
        if sha(messages[1]["content"])[0] in "01234567":
            held.add(messages[1]["content"])
            return True
        return False

    with ScriptedJudge(slow=slow) as judge:
        # default: no failure allowed, the suite stops with a one-line error
        recipe = recipe_for("alpaca_eval", judge.base_url, tmp_path, timeout=1.5)
        with pytest.raises(UserError, match=r"judge requests failed .*RetriesExhausted.*run the same command again"):
            evaluate(recipe, "alpaca_eval", tmp_path)
        # allowed: the timeouts are counted as failed judgments in the metrics
        recipe = recipe_for("alpaca_eval", judge.base_url, tmp_path, "eval.max_failed_judgments=1.0", timeout=1.5)
        metrics, out = evaluate(recipe, "alpaca_eval", tmp_path)
    annotations = read_jsonl(out / "annotations.jsonl")
    failed = [a for a in annotations if a["status"] == "failed"]
    # exactly the held requests failed, whatever the machine's load: the others answer in milliseconds
    assert {a["id"] for a in failed} == {a["id"] for a in annotations
                                         if any(a["instruction"] in text for text in held)}
    assert 0 < len(failed) < LIMIT
    assert metrics["judge_failed"] == len(failed) and metrics["judge_errors"] == {"RetriesExhausted": len(failed)}
    assert all("no answer within 1.5 s" in a["error"] for a in failed)
    assert metrics["n_total"] == LIMIT - len(failed)


@pytest.mark.parametrize("fault", ["not_json", "cut", "reset", "slow", "empty_choices", "no_content", "503"])
def test_judge_faults_are_retried_then_counted(tmp_path, fault):
    """Each fault on a request's first attempt is retried and the judgment completes; a fault on
    every attempt is counted as a failed judgment (never a traceback, never a silent row)."""
    flaky = lambda messages: sha(messages[1]["content"])[0] in "0123456789"  # ~60 % of the requests
    first_only = lambda messages, attempt: fault if flaky(messages) and attempt == 1 else None
    with ScriptedJudge(fault=first_only) as judge:
        recipe = recipe_for("alpaca_eval", judge.base_url, tmp_path, timeout=1.5)
        metrics, out = evaluate(recipe, "alpaca_eval", tmp_path)
        assert judge.faults[fault] > 0 and metrics["judge_ok"] == LIMIT and metrics["judge_failed"] == 0
        assert set(judge.answered.values()) == {1}  # each judgment answered once, after its retry
    always = lambda messages, attempt: fault if flaky(messages) else None
    with ScriptedJudge(fault=always) as judge:
        recipe = recipe_for("alpaca_eval", judge.base_url, tmp_path / "again", "eval.max_failed_judgments=1.0",
                            timeout=1.5)
        metrics, out = evaluate(recipe, "alpaca_eval", tmp_path / "again")
    annotations = read_jsonl(out / "annotations.jsonl")
    failed = [a for a in annotations if a["status"] == "failed"]
    assert len(failed) == judge.faults[fault] / 2 > 0  # max_retries 1: two attempts each
    assert metrics["judge_failed"] == len(failed) and metrics["judge_ok"] == LIMIT - len(failed)
    assert all(a["preference"] is None and a["error"].startswith("RetriesExhausted") for a in failed)


def test_run_suite_reads_its_inputs_only(tmp_path):
    """The suite entry point on hand-built SuiteInputs: the model's name in the files is the one
    given, not one read from the output directory's name (a round directory here)."""
    from pydantic import ValidationError

    from synpo.engines import make_engine
    from synpo.evals import SuiteInputs, run_suite

    with ScriptedJudge() as judge:
        recipe = recipe_for("alpaca_eval", judge.base_url, tmp_path)
        inputs = SuiteInputs(eval=recipe.eval, engine=recipe.engine_for("eval"), seed=recipe.seed,
                             model_name="my-model")
        with pytest.raises(ValidationError):
            SuiteInputs(**inputs.model_dump(), recipe="anything")  # exactly what a suite reads, nothing else
        engine = make_engine(inputs.engine, str(TINY_MODEL), seed=inputs.seed)
        try:
            out = tmp_path / "run" / "round_03" / "eval" / "alpaca_eval"
            metrics = run_suite("alpaca_eval", inputs, engine, out, tmp_path / "work")
        finally:
            engine.close()
    assert {m["generator"] for m in json.loads((out / "model_outputs.json").read_text())} == {"my-model"}
    assert {a["generator_2"] for a in read_jsonl(out / "annotations.jsonl")} == {"my-model"}
    assert metrics["judge_judgments"] == LIMIT and metrics["judge_ok"] == LIMIT


def test_no_module_of_the_evaluation_reads_the_recipe():
    import ast

    import synpo.evals

    for path in sorted(Path(synpo.evals.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        arguments = {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
        assert not names & {"Recipe", "load_recipe"} and "recipe" not in arguments, path.name


# ---- arena_hard -----------------------------------------------------------------------------------


def test_arena_hard_end_to_end(tmp_path):
    with ScriptedJudge() as judge:
        recipe = recipe_for("arena_hard", judge.base_url, tmp_path)
        metrics, out = evaluate(recipe, "arena_hard", tmp_path)
    answers = {a["uid"]: a["messages"][1]["content"]["answer"] for a in read_jsonl(out / "model_answer.jsonl")}
    rows = load_suite("arena_hard", None, LIMIT, evaluation(recipe, "arena_hard", "").seed)
    assert list(answers) == [r["uid"] for r in rows]
    judgments = read_jsonl(out / "model_judgment.jsonl")
    expected_wins = expected_total = continued = 0
    for r, j in zip(rows, judgments):
        model, baseline = answers[r["uid"]], r["baseline"]
        g1, g2 = j["games"]
        # game 1 shows the baseline as A, game 2 the model as A; the label is the scripted judge's
        assert g1["user_prompt"].index(baseline) < g1["user_prompt"].index("<|The Start of Assistant B")
        assert g1["score"] == arena_label(baseline, model) and g2["score"] == arena_label(model, baseline)
        continued += arena_needs_continue(g1["user_prompt"]) + arena_needs_continue(g2["user_prompt"])
        model_wins = sha(model) < sha(baseline)
        weight = 3 if ">>" in g1["score"] else 1
        expected_wins += 2 * weight * model_wins
        expected_total += 2 * weight
    assert continued > 0  # some games needed arena-hard's "continue your judgment" turn ...
    assert metrics["judge_requests"] == 2 * LIMIT + continued  # ... which is one more request each
    assert metrics["judge_judgments"] == 2 * LIMIT and metrics["judge_ok"] == 2 * LIMIT
    # two models: the Bradley-Terry win rate is the weighted win fraction (A>>B counts 3 times)
    assert metrics["battles"] == expected_total
    assert metrics["win_rate"] == pytest.approx(100 * expected_wins / expected_total, abs=0.01)
    assert metrics["ci_lower"] <= metrics["win_rate"] <= metrics["ci_upper"]
    assert set(headline("arena_hard", metrics)) >= {"win_rate", "ci_lower", "ci_upper"}


def test_resumed_evaluation_sends_no_request_twice(tmp_path):
    with ScriptedJudge(fail_after=5) as judge:  # answers 5 requests, then HTTP 503 for good
        recipe = recipe_for("arena_hard", judge.base_url, tmp_path)
        with pytest.raises(UserError, match="judge requests failed"):
            evaluate(recipe, "arena_hard", tmp_path)
        assert sum(judge.answered.values()) == 5
        judge.fail_after = None  # the endpoint recovers; the same command runs again
        metrics, _ = evaluate(recipe, "arena_hard", tmp_path)
        # every judgment was answered exactly once across both runs, the 5 early ones came from the cache
        assert set(judge.answered.values()) == {1}
        assert sum(judge.answered.values()) == metrics["judge_requests"] == len(judge.answered)
        before = sum(judge.received.values())
        evaluate(recipe, "arena_hard", tmp_path)
        assert sum(judge.received.values()) == before


# ---- mt_bench -------------------------------------------------------------------------------------


def test_mt_bench_end_to_end(tmp_path):
    with ScriptedJudge() as judge:
        metrics, out = evaluate(recipe_for("mt_bench", judge.base_url, tmp_path), "mt_bench", tmp_path)
    answers = {a["question_id"]: a["choices"][0]["turns"] for a in read_jsonl(out / "model_answer.jsonl")}
    assert len(answers) == LIMIT and all(len(t) == 2 for t in answers.values())
    judgments = read_jsonl(out / "model_judgment.jsonl")
    assert len(judgments) == 2 * LIMIT
    for j in judgments:
        a1, a2 = answers[j["question_id"]]
        assert j["score"] == mt_rating(j["user_prompt"])
        if j["turn"] == 2:  # the second turn is judged with the model's own first answer in the conversation
            assert j["judge"][1].endswith("multi-turn") and f"### Assistant A:\n{a1}\n" in j["user_prompt"]
    by_turn = {t: [j["score"] for j in judgments if j["turn"] == t] for t in (1, 2)}
    assert metrics["turn_1"] == pytest.approx(sum(by_turn[1]) / LIMIT)
    assert metrics["turn_2"] == pytest.approx(sum(by_turn[2]) / LIMIT)
    assert metrics["score"] == pytest.approx((sum(by_turn[1]) + sum(by_turn[2])) / (2 * LIMIT))
    assert metrics["judge_judgments"] == 2 * LIMIT and metrics["judge_unparseable"] == 0


def test_mt_bench_math_questions_are_graded_against_the_reference():
    from synpo.evals.mt_bench import judge_messages

    rows = load_suite("mt_bench", None)
    math_row = next(r for r in rows if r["category"] == "math")
    name, messages = judge_messages(math_row, 1, "ANSWER-ONE", "ANSWER-TWO")
    assert name == "single-math-v1" and math_row["references"][0] in messages[1]["content"]
    assert "ANSWER-ONE" in messages[1]["content"] and "ANSWER-TWO" not in messages[1]["content"]
    name, messages = judge_messages(math_row, 2, "ANSWER-ONE", "ANSWER-TWO")
    assert name == "single-math-v1-multi-turn" and math_row["references"][1] in messages[1]["content"]
    assert "focus on the assistant's answer to the second" in messages[0]["content"]
    writing = next(r for r in rows if r["category"] == "writing")
    name, messages = judge_messages(writing, 1, "A", "B")
    assert name == "single-v1" and messages[0]["content"] == "You are a helpful assistant."


# ---- a real model as the judge: transformers serve ------------------------------------------------------


def judge_errors(record) -> list[str]:
    """The `error` of every judgment in a suite's record, however deep the suite nests them."""
    if isinstance(record, list):
        return [e for r in record for e in judge_errors(r)]
    if not isinstance(record, dict):
        return []
    own = [record["error"]] if record.get("error") else []
    return own + [e for k, v in record.items() if k != "error" for e in judge_errors(v)]


def long_context_copy(tmp_path) -> Path:
    """The tiny model with a 4096-token context (RoPE reads any length): the judges' prompts are
    1.5-2k tokens and transformers serve refuses a prompt longer than the model's context."""
    import shutil

    judge = tmp_path / "tiny-judge-4k"
    shutil.copytree(TINY_MODEL, judge)
    config = json.loads((judge / "config.json").read_text())
    (judge / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    return judge


@pytest.mark.slow  # starting the server takes 15-60 s on a busy 2-core machine
def test_tiny_model_served_by_transformers_as_the_judge(tmp_path):
    """Every suite against `transformers serve` running the tiny model: its verdicts are mostly
    unreadable, and every one of them is counted (ok + unparseable = judgments, none failed). A judge
    whose context cannot hold the prompt is refused by the server, and counted as failed with its reason."""
    from synpo.engines.local_server import LocalServer

    judge = long_context_copy(tmp_path)
    with LocalServer(log_path=tmp_path / "serve.log") as server:
        for suite, judgments in [("alpaca_eval", 1), ("arena_hard", 2), ("mt_bench", 2)]:
            recipe = recipe_for(suite, server.base_url, tmp_path, "eval.limit=1", "eval.judge_max_tokens=12",
                                "eval.max_failed_judgments=1.0",  # unreadable verdicts are expected here
                                judge_model=str(judge), timeout=120)
            metrics, out = evaluate(recipe, suite, tmp_path)
            assert metrics["judge_judgments"] == judgments and metrics["judge_failed"] == 0
            assert metrics["judge_ok"] + metrics["judge_unparseable"] == judgments
            assert metrics["judge_requests"] >= judgments
        assert server.requests_answered() >= 5

        short = recipe_for("alpaca_eval", server.base_url, tmp_path / "short", "eval.limit=1",
                           "eval.judge_max_tokens=12", "eval.max_failed_judgments=1.0",
                           judge_model=str(TINY_MODEL), timeout=120)  # 512 tokens: the prompt has ~2000
        metrics, out = evaluate(short, "alpaca_eval", tmp_path / "short")
        assert metrics["judge_failed"] == 1 and metrics["judge_errors"] == {"RequestRejected": 1}
        (error,) = [json.loads(line)["error"] for line in (out / "annotations.jsonl").open()]
        assert "HTTP 400" in error and "512" in error


# ---- alpaca_eval's official backend ------------------------------------------------------------------


def test_official_backend_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "alpaca_eval", None)  # import alpaca_eval -> ImportError
    recipe = load_recipe(TINY_RECIPE, ["eval.suites=[alpaca_eval]", "eval.alpaca_eval_backend=official",
                                       "eval.limit=2", "runtime.threads=1", f"eval.data_dir={eval_data_dir()}"])
    with pytest.raises(UserError, match="needs the alpaca_eval package"):
        evaluate(recipe, "alpaca_eval", tmp_path)
    assert not (tmp_path / "run" / "round_00" / "eval" / "alpaca_eval" / "model_outputs.json").exists()


def test_official_backend_hands_the_outputs_to_alpaca_eval(tmp_path, monkeypatch):
    """A stand-in `alpaca_eval` module records the call; its leaderboard row becomes the metrics."""
    import sys
    import types

    pd = pytest.importorskip("pandas")
    calls = []

    def fake_evaluate(**kwargs):
        calls.append({**kwargs, "base_url": os.environ.get("OPENAI_BASE_URL"),
                      "key": os.environ.get("OPENAI_API_KEY"),
                      "outputs": json.loads(Path(kwargs["model_outputs"]).read_text())})
        board = pd.DataFrame({"length_controlled_winrate": [12.5], "win_rate": [10.0], "standard_error": [1.5],
                              "n_total": [2], "avg_length": [40]}, index=[kwargs["name"]])
        return board, []

    monkeypatch.setitem(sys.modules, "alpaca_eval", types.SimpleNamespace(evaluate=fake_evaluate))
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    recipe = load_recipe(TINY_RECIPE, ["eval.suites=[alpaca_eval]", "eval.alpaca_eval_backend=official",
                                       "eval.limit=2", "runtime.threads=1", "eval.sampling.max_new_tokens=8",
                                       f"eval.data_dir={eval_data_dir()}",
                                       'eval.judge={base_url: "http://127.0.0.1:9/v1", model: gpt-4-turbo, '
                                       'api_key_env: MY_JUDGE_KEY}'])
    metrics, out = evaluate(recipe, "alpaca_eval", tmp_path)
    (call,) = calls
    assert call["annotators_config"] == "weighted_alpaca_eval_gpt4_turbo" and call["name"] == "tiny-cpu-round_00"
    assert call["reference_outputs"] == str(out / "reference_outputs.json") and len(call["outputs"]) == 2
    assert call["base_url"] == "http://127.0.0.1:9/v1" and call["key"] == "sk-test"
    assert "OPENAI_BASE_URL" not in os.environ  # restored after the call
    assert metrics["backend"] == "official" and metrics["length_controlled_winrate"] == 12.5
    assert headline("alpaca_eval", metrics) == {"lc_win_rate_v1": 12.5, "win_rate": 10.0, "win_rate_se": 1.5}
    assert metrics["lc_glm"] == "length_controlled_v1"
    assert "sk-test" not in (out / "metrics.json").read_text()


# ---- the loop: every suite after every round, and the report ------------------------------------------


@pytest.mark.slow
def test_loop_evaluates_every_suite_each_round_and_writes_the_report(tmp_path):
    from conftest import run_iterate

    with ScriptedJudge() as judge:
        judge_cfg = (f'{{base_url: "{judge.base_url}", model: scripted-judge, concurrency: 4, '
                     f'cache_dir: "{tmp_path / "judge_cache"}"}}')
        proc = run_iterate(tmp_path / "run", "eval.suites=[toy,alpaca_eval,arena_hard,mt_bench]", "eval.limit=5",
                           "eval.sampling.max_new_tokens=8", f"eval.judge={judge_cfg}",
                           f"eval.data_dir={eval_data_dir()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    rows = read_jsonl(run / "metrics.jsonl")
    assert {(r["round"], r["suite"]) for r in rows} == {(t, s) for t in (0, 1)
                                                         for s in ("toy", "alpaca_eval", "arena_hard", "mt_bench")}
    by = {(r["round"], r["suite"]): r["metrics"] for r in rows}
    assert {"lc_win_rate_minimal", "win_rate"} <= set(by[1, "alpaca_eval"]) and "ci_upper" in by[1, "arena_hard"]
    assert "turn_2" in by[1, "mt_bench"]
    md = (run / "report.md").read_text()
    for suite, metric in [("toy", "win_rate"), ("alpaca_eval", "lc_win_rate_minimal"), ("arena_hard", "win_rate"),
                          ("mt_bench", "score")]:
        assert f"### {suite}" in md and (run / "plots" / f"{suite}__{metric}.png").exists()
    assert "## Data per round" in md and "## Example pairs" in md
    assert "data:image/png;base64," in (run / "report.html").read_text()
