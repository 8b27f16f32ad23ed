"""`synpo eval` on judged suites, AlpacaEval's weighted verdicts and MT-Bench's answer temperatures.

The AlpacaEval set is generated here in alpaca_eval's format (no data directory needed); the
judge is the scripted loopback server of tests/judge_server.py.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from judge_server import ScriptedJudge, alpaca_confidence, key, sha

from synpo.cli import main
from synpo.engines.base import Completion
from synpo.evals.verdicts import weighted_alpaca_eval
from synpo.io import read_json, read_jsonl
from synpo.toy import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
PROBE = key([{"role": "user", "content": "Reply with OK."}])  # the judge check's one question


@pytest.fixture
def data_dir(tmp_path):
    """An AlpacaEval reference file of 30 instructions with outputs of varied lengths."""
    rows = [{"dataset": "helpful_base", "instruction": f"Question {i}: what is {i} plus {i * 3}?",
             "output": f"The answer is {4 * i}. " + "Here is why. " * (i % 7), "generator": "gpt4_1106_preview"}
            for i in range(30)]
    path = tmp_path / "evals" / "alpaca_eval" / "gpt4_1106_preview_model_outputs.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rows))
    return path.parents[1]


def _eval_args(judge, data_dir, out, *extra):
    return ["eval", "--suite", "alpaca_eval", "--model", str(TINY_MODEL), "--judge-url", judge.base_url,
            "--judge-model", "scripted-judge", "--limit", "20", "--data-dir", str(data_dir), "--out", str(out),
            "--max-new-tokens", "8", "--threads", "1", *extra]


def test_synpo_eval_alpaca_eval_end_to_end_and_resumable(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("SYNPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SYNPO_QUIET", "1")
    out = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with ScriptedJudge() as judge:
        proc = subprocess.run([sys.executable, "-m", "synpo.cli", *_eval_args(judge, data_dir, out, "--json")],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads(proc.stdout)
        assert judge.received.pop(PROBE) == 1  # the judge is checked once, before any answer
        assert len(judge.received) == 20 and sum(judge.received.values()) == 20
        # the loop's outputs: alpaca_eval-format outputs, annotations, metrics
        outputs = json.loads((out / "model_outputs.json").read_text())
        assert len(outputs) == 20 and {o["generator"] for o in outputs} == {"tiny-llama"}
        annotations = read_jsonl(out / "annotations.jsonl")
        assert [a["status"] for a in annotations] == ["ok"] * 20
        assert all(a["preference_kind"] == "weighted" for a in annotations)
        assert read_json(out / "metrics.json") == metrics
        assert metrics["n_total"] == 20 and metrics["lc_glm"] == "length_controlled_minimal"
        assert metrics["preferences"] == "weighted" and metrics["length_controlled_winrate"] is not None
        # the same command again: answers from the shards, every judgment from the cache
        assert main(_eval_args(judge, data_dir, out, "--json")) == 0
        assert judge.received.pop(PROBE) == 1
        assert sum(judge.received.values()) == 20
        assert read_json(out / "metrics.json") == metrics


def test_synpo_eval_without_a_judge_is_a_clear_error(capsys):
    assert main(["eval", "--suite", "arena_hard", "--model", str(TINY_MODEL)]) == 2
    assert "--judge-url URL --judge-model NAME" in capsys.readouterr().err


def test_weighted_preference_is_alpaca_eval_logprob_parser():
    top = lambda **lp: [[{"token": t, "logprob": v} for t, v in lp.items()]]
    assert weighted_alpaca_eval(top(m=math.log(0.8), M=math.log(0.2))) == pytest.approx(1.2)
    assert weighted_alpaca_eval(top(M=-0.01, Both=-5.0)) == 2.0  # a missing token has probability 0
    assert weighted_alpaca_eval(top(m=-0.3)) == 1.0
    # only the first generated token is read (the official annotator generates one)
    assert weighted_alpaca_eval(top(The=-0.1) + top(m=-0.1)) is None
    assert weighted_alpaca_eval(None) is None and weighted_alpaca_eval([]) is None


@pytest.mark.parametrize("logprobs", [True, False])
def test_weighted_verdicts_and_the_hard_fallback(tmp_path, data_dir, monkeypatch, logprobs):
    monkeypatch.setenv("SYNPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SYNPO_QUIET", "1")
    out = tmp_path / "eval"
    with ScriptedJudge(logprobs=logprobs) as judge:
        assert main([*_eval_args(judge, data_dir, out, "--json"), "--limit", "8"]) == 0
    metrics = read_json(out / "metrics.json")
    for a in read_jsonl(out / "annotations.jsonl"):
        model_wins = sha(a["output_2"]) < sha(a["output_1"])  # the scripted judge's choice
        if logprobs:  # 1 + P(the model's output wins), from the judge's logprobs, whichever order was shown
            p = alpaca_confidence(a["output_1"], a["output_2"])
            assert a["preference"] == pytest.approx(1 + (p if model_wins else 1 - p))
            assert a["preference_kind"] == "weighted"
        else:  # the server gave no logprobs: the hard verdict, recorded as such
            assert a["preference"] == (2 if model_wins else 1) and a["preference_kind"] == "hard"
    kind = "weighted" if logprobs else "hard"
    assert metrics["preferences"] == kind
    assert (metrics["judge_weighted"], metrics["judge_hard_fallback"]) == ((8, 0) if logprobs else (0, 8))


def test_mt_bench_answers_use_fastchat_temperatures_per_category(tmp_path):
    from synpo.evals import SuiteInputs, mt_bench
    from synpo.evals.datasets import load_suite
    from synpo.recipe import load_recipe

    class Recording:
        def __init__(self):
            self.temperatures = {}

        def generate(self, requests, sampling):
            self.temperatures.update({r.id: sampling.temperature for r in requests})
            return [Completion(r.id, [f"answer to {r.id}"], ["stop"], [3]) for r in requests]

    rows = load_suite("mt_bench", None)
    engine = Recording()
    recipe = load_recipe(None, ["eval.sampling.temperature=0.3"], check_files=False)
    inputs = SuiteInputs(eval=recipe.eval, engine=recipe.engine, seed=0, model_name="m")
    answers = mt_bench.answer_by_temperature(engine, rows, [[{"role": "user", "content": r["turns"][0]}]
                                                           for r in rows], inputs, tmp_path, "t1")
    assert answers == [f"answer to {r['id']}-t1" for r in rows]  # in question order
    expected = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
    assert {r["category"] for r in rows} == set(expected)
    for r in rows:
        assert engine.temperatures[f"{r['id']}-t1"] == expected[r["category"]]


def test_an_output_identical_to_the_reference_is_a_draw_without_a_request():
    from synpo.evals.alpaca_eval import judge_outputs
    from synpo.evals.judge import Reply

    class Judge:
        name = "fake"
        asked = []

        def ask(self, conversations, max_tokens, desc="", top_logprobs=0):
            self.asked += [i for i, _ in conversations]
            return [Reply(i, "M") for i, _ in conversations]  # no logprobs: hard verdicts

    rows = [{"id": f"q{i}", "instruction": f"q{i}", "dataset": "d", "reference": f"ref {i}",
             "reference_generator": "gpt4_1106_preview"} for i in range(3)]
    judge = Judge()
    annotations, tally = judge_outputs(judge, rows, ["ref 0", "other 1", "other 2"], "model", 0, 16)
    assert judge.asked == ["q1", "q2"]
    assert annotations[0]["preference"] == 1.5 and annotations[0]["preference_kind"] == "identical"
    assert [a["preference_kind"] for a in annotations[1:]] == ["hard", "hard"]
    assert tally.metrics()["judge_requests"] == 2 and tally.metrics()["judge_ok"] == 3


def test_unparseable_verdicts_are_capped_like_failed_requests():
    from synpo.errors import UserError
    from synpo.evals.judge import Reply, Tally

    tally = Tally()
    for i in range(10):
        text = None if i == 0 else "no verdict" if i < 3 else "m"
        tally.add(Reply(str(i), text, None if text else "RetriesExhausted: timeout"), None if i < 3 else 1)
    assert (tally.failed, tally.unparseable) == (1, 2)
    tally.check(0.3, "alpaca_eval")  # 3 of 10 without a verdict: allowed
    with pytest.raises(UserError, match=r"3 of 10 judgments have no verdict \(1 failed .*, 2 unparseable\)"):
        tally.check(0.25, "alpaca_eval")


def test_eval_answers_are_keyed_by_the_model_not_its_folder_name(tmp_path, data_dir, monkeypatch):
    """Two checkpoints both named `policy`, evaluated one after the other from the same folder with
    the default --out, each get their own answers; the same checkpoint again reuses its answers, and
    one whose weights changed in place is answered again."""
    import shutil

    from synpo.stages import evaluate

    class Echo:
        """Answers with a hash of the weights' last bytes: which checkpoint answered."""

        generated = 0

        def __init__(self, model):
            self.tag = (Path(model) / "model.safetensors").read_bytes()[-4096:].hex()[-12:]

        def generate(self, requests, sampling):
            Echo.generated += len(requests)
            return [Completion(r.id, [f"answer by {self.tag}"], ["stop"], [3]) for r in requests]

        def close(self):
            pass

    monkeypatch.setattr(evaluate, "engine_for", lambda base_cfg, engine_cfg, model, seed: Echo(model))
    monkeypatch.setenv("SYNPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SYNPO_QUIET", "1")
    monkeypatch.chdir(tmp_path)
    models = {}
    for run, t, flip in (("a", 1, 0), ("b", 2, 1)):
        model = tmp_path / "runs" / run / f"round_0{t}" / "policy"
        shutil.copytree(TINY_MODEL, model)
        weights = bytearray((model / "model.safetensors").read_bytes())
        weights[-1] ^= flip  # b: other weights, same shapes and size
        (model / "model.safetensors").write_bytes(bytes(weights))
        models[run] = model

    def outputs_of(model):
        args = ["eval", "--suite", "alpaca_eval", "--model", str(model), "--judge-url", judge.base_url,
                "--judge-model", "scripted-judge", "--limit", "4", "--data-dir", str(data_dir), "--json"]
        assert main(args) == 0
        newest = max((tmp_path / "synpo-eval").glob("policy*/alpaca_eval/model_outputs.json"),
                     key=lambda p: p.stat().st_mtime_ns)
        return {o["output"] for o in read_json(newest)}

    with ScriptedJudge() as judge:
        tag = {k: (m / "model.safetensors").read_bytes()[-4096:].hex()[-12:] for k, m in models.items()}
        assert tag["a"] != tag["b"]
        assert outputs_of(models["a"]) == {f"answer by {tag['a']}"}
        assert outputs_of(models["b"]) == {f"answer by {tag['b']}"}
        assert Echo.generated == 8 and len(list((tmp_path / "synpo-eval").glob("policy*"))) == 2
        assert outputs_of(models["a"]) == {f"answer by {tag['a']}"}
        assert Echo.generated == 8  # the unchanged model's answers are reused
        # the same --out folder for another checkpoint: answered again, not read back
        fixed = ["--out", str(tmp_path / "fixed")]
        common = ["eval", "--suite", "alpaca_eval", "--judge-url", judge.base_url, "--judge-model", "scripted-judge",
                  "--limit", "4", "--data-dir", str(data_dir), "--json", *fixed]
        assert main([*common, "--model", str(models["a"])]) == 0
        assert main([*common, "--model", str(models["b"])]) == 0
        assert {o["output"] for o in read_json(tmp_path / "fixed" / "model_outputs.json")} == {f"answer by {tag['b']}"}


def test_synpo_eval_checks_the_judge_before_answering_anything(tmp_path, data_dir, monkeypatch, capsys):
    """A wrong judge URL: one quick question, a one-line error naming the option as written, and not
    one answer generated."""
    import socket
    import time

    from synpo.stages import evaluate

    monkeypatch.setenv("SYNPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SYNPO_QUIET", "1")

    def no_engine(*args, **kwargs):
        raise AssertionError("an engine was started before the judge was checked")

    monkeypatch.setattr(evaluate, "engine_for", no_engine)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["eval", "--suite", "arena_hard", "--model", str(TINY_MODEL), "--judge-url", f"http://127.0.0.1:{port}/v1",
            "--judge-model", "j", "--limit", "2", "--out", str(tmp_path / "out")]
    started = time.monotonic()
    assert main(args) == 2
    assert time.monotonic() - started < 10  # the engine's six retries with backoff take about 40 s
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --judge-url: the judge at http://127.0.0.1:{port}/v1 "
                                               "does not answer a test question"), err
    assert not (tmp_path / "out").exists()


def test_eval_identity_follows_the_answers_makers_not_the_judge(tmp_path):
    import shutil

    from synpo.cli import eval_identity
    from synpo.iterate import evaluation
    from synpo.recipe import load_recipe

    model = tmp_path / "policy"
    shutil.copytree(TINY_MODEL, model)

    def identity(*overrides):
        judge = "eval.judge={base_url: 'http://h/v1', model: j}"
        recipe = load_recipe(None, ["eval.suites=[arena_hard]", judge, *overrides], check_files=False)
        return eval_identity(str(model), evaluation(recipe, "arena_hard", "policy"))

    base = identity()
    assert identity("eval.judge={base_url: 'http://other/v1', model: k}") == base  # another judge, same answers
    assert identity("eval.sampling.max_new_tokens=7") != base
    assert identity("model.chat_template='{{ messages }}'") != base
    (model / "chat_template.jinja").write_text("{{ messages[0].content }}")  # the checkpoint's own template
    assert identity() != base
