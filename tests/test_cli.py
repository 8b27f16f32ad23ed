"""The command line a new user meets: --version, defaults and examples in --help, `synpo env`,
`synpo iterate --help` naming itself, and `python -m synpo.plan`."""

import importlib.metadata
import importlib.util
import platform
import subprocess
import sys

import pytest

from synpo.cli import main
from tests.conftest import ROOT, child_env


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"synpo {importlib.metadata.version('synpo')}"


@pytest.mark.parametrize("command,shown", [
    (["eval"], ["(default: toy)", "(default: 128)", "examples:", "synpo eval --suite arena_hard"]),
    (["plan"], ["(default: 8xA100-80G)", "examples:"]),
    (["decontaminate"], ["(default: 0.8)", "examples:"]),
    ([], ["examples:", "synpo env"]),
])
def test_help_shows_defaults_and_examples(command, shown, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for fragment in shown:
        assert fragment in out, fragment
    assert "(default: None)" not in out


def test_iterate_help_names_the_command_it_was_called_as(capsys):
    with pytest.raises(SystemExit):
        main(["iterate", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: synpo iterate ") and "examples:" in out


def test_synpo_env_reports_versions_and_hardware(capsys):
    import torch

    assert main(["env"]) == 0
    out = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines()
               if not line.startswith("vllm environment"))
    assert out["python"].startswith(platform.python_version())
    assert out["torch"] == torch.__version__
    for package in ("transformers", "trl", "peft", "accelerate"):
        assert out[package] == importlib.metadata.version(package)
    assert out["vllm"] in ("not installed", *([importlib.metadata.version("vllm")] if "vllm" in sys.modules or
                                               importlib.util.find_spec("vllm") else []))
    assert out["GPUs"] == ("none visible" if not torch.cuda.is_available() else out["GPUs"])
    assert "CPU cores" in out


def test_python_m_synpo_plan_is_an_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "synpo.plan", str(ROOT / "recipes" / "tiny-cpu.yaml")],
                          capture_output=True, text=True, env=child_env(), timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "synpo plan tiny-cpu: 3 rounds" in proc.stdout


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_the_rerun_finishes_the_run(tmp_path):
    """Ctrl-C (SIGINT) mid-run: one line saying how to resume, exit 130, no traceback; the same command
    then resumes where the interrupted run stopped."""
    import json
    import signal
    import time

    from tests.conftest import MINI, TINY_RECIPE, run_iterate

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "synpo.iterate", str(TINY_RECIPE), "--run-dir", str(run_dir)]
    for o in MINI:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    state, deadline = run_dir / "state.json", time.time() + 600
    while proc.poll() is None and time.time() < deadline:  # once the first stage has finished
        if state.exists() and json.loads(state.read_text() or "{}").get("stages"):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    finished = json.loads(state.read_text())["stages"]
    proc = run_iterate(run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = json.loads(state.read_text())["stages"]
    assert all(stages[k]["finished"] == v["finished"] for k, v in finished.items())  # not run again
    assert len(stages) > len(finished)
