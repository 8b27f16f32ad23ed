"""Malformed inputs: each one ends in a one-line error and exit code 2, and the run directory is
exactly as it was: absent for a first run, byte for byte the same for a finished one.

The loop runs in-process (`synpo.iterate.main`, what `python -m synpo.iterate` calls) so the
module is fast; every error must come before a model is loaded anyway. One case also runs as
a real process to check the exit status.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from judge_server import ScriptedJudge

from synpo.iterate import main
from tests.conftest import MINI, TINY_RECIPE, child_env

SEED_OK = [{"prompt": "Sort the numbers: 3, 1, 2", "response": "1, 2, 3"},
           {"prompt": "Reverse the words: red green", "response": "green red"}]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("SYNPO_QUIET", "1")


@pytest.fixture(scope="module")
def finished_run(mini_run, tmp_path_factory) -> Path:
    """A copy of a finished run (the cases must not touch it; a copy keeps mini_run safe if one does)."""
    copy = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(mini_run, copy)
    return copy


def tree_hash(root: Path) -> str | None:
    """Every path under root with its bytes; None when root does not exist."""
    if not root.exists():
        return None
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# ---- the cases: (name, files to write, --set overrides, a fragment the error must contain) ----------
# Files are written into the test's directory; "{d}" in an override is that directory. A file named
# recipe.yaml replaces the tiny recipe.

def seed(body: bytes, fmt: str = "jsonl", name: str = "seed.jsonl", *extra: str):
    return {name: body}, [f"data.seed.path={{d}}/{name}", f"data.seed.format={fmt}", *extra]


def corpus(body: bytes, fmt: str = "jsonl", name: str = "corpus.jsonl"):
    return {name: body}, [f"data.corpus.path={{d}}/{name}", f"data.corpus.format={fmt}"]


CASES = [
    # recipes
    ("empty recipe", {"recipe.yaml": b""}, [], "the recipe is empty"),
    ("recipe of comments only", {"recipe.yaml": b"# nothing yet\n"}, [], "the recipe is empty"),
    ("recipe not YAML", {"recipe.yaml": b"name: x\nrounds: [1\n"}, [], "not valid YAML"),
    ("recipe is a list", {"recipe.yaml": b"- rounds: 1\n"}, [], "a recipe is a YAML mapping"),
    ("recipe not UTF-8", {"recipe.yaml": b"name: caf\xe9\n"}, [], "not UTF-8"),
    ("recipe with a misspelt key", {"recipe.yaml": b"name: x\nrunds: 2\n"}, [], "runds: unknown key"),
    ("recipe base missing", {"recipe.yaml": b"base: nowhere.yaml\n"}, [], "base: file does not exist"),
    # --set values
    ("--set without =", {}, ["rounds"], "expected KEY=VALUE"),
    ("--set rounds=0", {}, ["rounds=0"], "rounds: must be > 0"),
    ("--set a wrong literal", {}, ["train.loss=ppo"], "train.loss: must be one of"),
    ("--set into a value", {}, ["rounds.x=1"], "rounds is not a section"),
    ("--set a wrong type", {}, ["engine.batch_size=many"], "engine.batch_size"),
    ("--set a missing model", {}, ["model.path=/nowhere/model"], "model path does not exist"),
    ("--set a missing seed file", {}, ["data.seed.path=/nowhere/seed.jsonl"], "file does not exist"),
    ("--set a missing data dir", {}, ["eval.suites=[arena_hard]", "eval.data_dir=/nowhere/evals",
                                      "eval.judge={base_url: 'http://127.0.0.1:9/v1', model: j}"],
     "eval.data_dir: directory does not exist"),
    # seed files: JSONL
    ("seed not UTF-8", *seed(jsonl(SEED_OK[:1]) + b'{"prompt": "caf\xe9", "response": "x"}\n'),
     "seed.jsonl:2: not UTF-8"),
    ("seed line not JSON", *seed(jsonl(SEED_OK) + b'{"prompt": "x", \n'), "seed.jsonl:3: not valid JSON"),
    ("seed row is a list", *seed(b'["a", "b"]\n'), "seed.jsonl:1: a JSONL row must be a JSON object"),
    ("seed prompt is a number", *seed(jsonl([*SEED_OK, {"prompt": 42, "response": "x"}])),
     "seed.jsonl:3: field 'prompt' is a number"),
    ("seed answer is a list", *seed(jsonl([{"prompt": "p", "response": ["a"]}])),
     "seed.jsonl:1: field 'response' is a list"),
    ("seed answer is an object", *seed(jsonl([{"prompt": "p", "response": {"text": "a"}}])),
     "field 'response' is an object"),
    ("seed field missing", *seed(jsonl([{"prompt": "p", "answer": "a"}])), "seed.jsonl:1: no field 'response'"),
    ("seed dotted path missing", *seed(jsonl([{"instruction": "p", "instances": [{"output": "a"}]}]), "jsonl",
                                       "seed.jsonl", "data.seed.prompt_field=instruction",
                                       "data.seed.response_field=instances.1.output"), "no field 'instances.1.output'"),
    ("seed all blank", *seed(jsonl([{"prompt": " ", "response": "a"}, {"prompt": "p", "response": ""}])),
     "no usable row (1 with a blank answer, 1 with a blank prompt)"),
    ("seed prompts too long to train", *seed(jsonl(SEED_OK), "jsonl", "seed.jsonl", "improver.train.max_length=8"),
     "every seed prompt is too long to train the improver on"),
    # seed files: Alpaca JSON
    ("alpaca file is an object", *seed(b'\xef\xbb\xbf{"data": [{"instruction": "p", "output": "a"}]}', "alpaca",
                                       "seed.json"), "the file is a JSON object with keys data"),
    ("alpaca record lacks output", *seed(b'[\n {"instruction": "p", "output": "a"},\n {"instruction": "q"}\n]',
                                         "alpaca", "seed.json"), "seed.json:3: record has no field 'output'"),
    ("alpaca output is a number", *seed(b'[{"instruction": "p", "input": "", "output": 7}]', "alpaca", "seed.json"),
     "field 'output' is a number"),
    ("alpaca not JSON", *seed(b'[{"instruction": "p",\n "output": }]', "alpaca", "seed.json"),
     "seed.json:2: not valid JSON"),
    # seed files: ShareGPT
    ("sharegpt turns not a list", *seed(jsonl([{"conversations": "hi"}]), "sharegpt"),
     "field 'conversations' must be a list"),
    ("sharegpt value is a number", *seed(jsonl([{"conversations": [{"from": "human", "value": 1},
                                                                    {"from": "gpt", "value": "a"}]}]), "sharegpt"),
     "field 'value' is a number"),
    # corpora
    ("corpus not UTF-8", *corpus(b"Some words here.\n\nMore \xff words.\n", "text", "corpus.txt"),
     "corpus.txt:3: not UTF-8"),
    ("corpus text is a list", *corpus(jsonl([{"text": ["a", "b"]}])), "corpus.jsonl:1: field 'text' is a list"),
    ("corpus lacks the field", *corpus(jsonl([{"body": "words"}])), "corpus.jsonl:1: no field 'text'"),
    ("corpus empty", *corpus(b"\n\n", "text", "corpus.txt"), "the corpus has no text"),
    # chat templates
    ("chat template does not parse", {"chat.jinja": b"{% for m in messages %}{{ m.content }}\n"},
     ["model.chat_template={d}/chat.jinja"], "model.chat_template does not render a conversation"),
    ("chat template raises", {}, ["model.chat_template=\"{{ raise_exception('no system role') }}\""],
     "model.chat_template does not render a conversation"),
    ("judge template does not parse", {"judge.jinja": b"Rate {{ response "},
     ["scorer.kind=judge", "scorer.template={d}/judge.jinja",
      "scorer.judge={base_url: 'http://127.0.0.1:9/v1', model: j}"], "judge.jinja:1: scorer.template"),
    # the run directory
    ("run dir is a file", {"run.txt": b"x"}, ["--run-dir={d}/run.txt"], "is a file"),
]
if not torch.cuda.is_available():  # a CPU-only machine: a recipe's cuda device is a promise it cannot keep
    CASES.append(("cuda without a GPU", {}, ["runtime.device=cuda"], "runtime.device: cuda, but torch sees no GPU"))


# judge endpoints that answer the test question with a fault on every attempt
JUDGE_FAULTS = [("judge replies not JSON", "not_json"), ("judge replies with no choices", "empty_choices"),
                ("judge cuts its replies", "cut"), ("judge resets connections", "reset")]


def run_main(tmp_path: Path, run_dir: Path, files: dict, overrides: list[str], capsys) -> tuple[int, str]:
    for name, body in files.items():
        (tmp_path / name).write_bytes(body)
    recipe = tmp_path / "recipe.yaml" if "recipe.yaml" in files else TINY_RECIPE
    argv = [str(recipe), "--run-dir", str(run_dir)]
    for o in [*MINI, *overrides]:
        o = o.replace("{d}", str(tmp_path))
        argv += o.split("=", 1) if o.startswith("--run-dir=") else ["--set", o]
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def check(code: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("state", ["new", "finished"])
@pytest.mark.parametrize("name,files,overrides,fragment", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line_exit_2_and_nothing_written(name, files, overrides, fragment, state, tmp_path,
                                                                request, capsys):
    run_dir = tmp_path / "run" if state == "new" else request.getfixturevalue("finished_run")
    before = tree_hash(run_dir)
    code, err = run_main(tmp_path, run_dir, files, overrides, capsys)
    check(code, err, fragment)
    assert tree_hash(run_dir) == before


@pytest.mark.parametrize("state", ["new", "finished"])
@pytest.mark.parametrize("name,fault", JUDGE_FAULTS, ids=[c[0] for c in JUDGE_FAULTS])
def test_a_judge_that_cannot_answer_stops_the_run_before_it_starts(name, fault, state, tmp_path, request, capsys):
    run_dir = tmp_path / "run" if state == "new" else request.getfixturevalue("finished_run")
    before = tree_hash(run_dir)
    with ScriptedJudge(fault=lambda messages, attempt: fault) as judge:
        # the engine's default retries (6, backoff from 1 s: about 40 s) are not spent on the test question
        judge_cfg = f"{{base_url: '{judge.base_url}', model: j, timeout: 5, cache_dir: '{tmp_path / 'cache'}'}}"
        started = time.monotonic()
        code, err = run_main(tmp_path, run_dir, {}, ["eval.suites=[toy,arena_hard]", f"eval.judge={judge_cfg}"],
                             capsys)
        assert judge.faults[fault] == 1 and time.monotonic() - started < 30  # one question, no retry
    check(code, err, "eval.judge.base_url: the judge at")
    assert "does not answer a test question" in err and "check the URL" in err
    assert tree_hash(run_dir) == before


def test_a_judge_that_rejects_the_key_stops_the_run_before_it_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SYNPO_TEST_JUDGE_KEY", "sk-wrong")
    with ScriptedJudge(fault=lambda messages, attempt: "401") as judge:
        judge_cfg = f"{{base_url: '{judge.base_url}', model: j, api_key_env: SYNPO_TEST_JUDGE_KEY}}"
        code, err = run_main(tmp_path, tmp_path / "run", {}, ["scorer.kind=judge", f"scorer.judge={judge_cfg}"],
                             capsys)
    check(code, err, "scorer.judge: the judge at")
    assert "HTTP 401" in err and "sk-wrong" not in err and judge.faults["401"] == 1  # never retried
    assert not (tmp_path / "run").exists()


def test_the_process_exits_2_with_one_line(tmp_path):
    (tmp_path / "seed.jsonl").write_bytes(b'{"prompt": 1, "response": "x"}\n')
    cmd = [sys.executable, "-m", "synpo.iterate", str(TINY_RECIPE), "--run-dir", str(tmp_path / "run"),
           "--set", f"data.seed.path={tmp_path / 'seed.jsonl'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'seed.jsonl'}:1: field 'prompt' is a number (1), not text; set data.seed.prompt_field "
        "to a text field (a dotted path such as instances.0.output reaches into nested ones)"]
    assert not (tmp_path / "run").exists()


MISSING_PACKAGES = [
    ("vllm not installed", "vllm", ["engine.kind=vllm"], "engine.kind vllm: vllm is not installed"),
    ("vllm python without vllm", "vllm", ["improver.engine={kind: vllm, python: '" + sys.executable + "'}"],
     "improver.engine.python: " + sys.executable + " cannot import vllm"),
    ("wandb not installed", "wandb", ["logging.report_to=[wandb]"], "logging.report_to: wandb needs the package"),
    ("mlflow not installed", "mlflow", ["logging.report_to=[tensorboard,mlflow]"], "mlflow needs the package"),
]


@pytest.mark.parametrize("state", ["new", "finished"])
@pytest.mark.parametrize("name,package,overrides,fragment", MISSING_PACKAGES, ids=[c[0] for c in MISSING_PACKAGES])
def test_a_missing_engine_or_tracker_package_stops_before_anything_is_written(name, package, overrides, fragment, state,
                                                                              tmp_path, request, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # importlib.util.find_spec(package) is None: not installed
    run_dir = tmp_path / "run" if state == "new" else request.getfixturevalue("finished_run")
    before = tree_hash(run_dir)
    code, err = run_main(tmp_path, run_dir, {}, overrides, capsys)
    check(code, err, fragment)
    assert tree_hash(run_dir) == before
