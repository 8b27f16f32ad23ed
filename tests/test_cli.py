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
