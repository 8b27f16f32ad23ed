"""The wheel a user installs carries everything the code reads at run time; the sdist and the
repository hold plain files (no symlinks, which break on Windows checkouts and in some sdists)."""

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = sorted(p.name for p in (ROOT / "prompts").iterdir() if p.suffix in (".jinja", ".jsonl"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("synpo-*.whl")
    return path


def test_wheel_ships_prompt_templates_toy_assets_and_eval_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "improver.jinja" in TEMPLATES and "mt_bench_judge_prompts.jsonl" in TEMPLATES
    for template in TEMPLATES:  # prompts/ ships as the package synpo.prompt_templates
        assert f"synpo/prompt_templates/{template}" in names
    assert "synpo/prompt_templates/mt_bench_judge_prompts.jsonl" in names
    for asset in ("toy/assets/tiny-llama/model.safetensors", "toy/assets/tiny-llama/tokenizer.json",
                  "toy/assets/data/seed.jsonl", "toy/assets/data/corpus.jsonl", "presets/llm-blender__PairRM.json"):
        assert f"synpo/{asset}" in names
    assert any(n.startswith("synpo/evals/data/mt_bench/") for n in names)


def test_wheel_ships_every_package(wheel):
    """pyproject.toml lists the packages by hand (a package-dir mapping rules out `find`): a new
    package under synpo/ that is not listed would be missing from the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in ROOT.glob("synpo/**/__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names, f"{init.parent.name}: add it to pyproject's packages"


def test_installed_wheel_renders_templates_without_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # -I: neither PYTHONPATH (the checkout) nor the working directory is on the path.
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "import synpo.templates as t\nfrom synpo.evals.mt_bench import judge_prompts\n"
            "print(t.__file__); print(t.PROMPTS_DIR / 'improver.jinja'); print(sorted(judge_prompts())[0])\n"
            "print(t.render('judge_score', prompt='QQQ', response='AAA'))")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(target)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, improver, first_judge, rendered = proc.stdout.split("\n", 3)
    assert module.startswith(str(target)) and improver == str(target / "synpo" / "prompt_templates" / "improver.jinja")
    assert first_judge == "pair-math-v1"
    assert "QQQ" in rendered and "AAA" in rendered


def test_sdist_holds_the_prompts_folder(tmp_path):
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sdist = tmp_path / proc.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for template in TEMPLATES:
        assert f"prompts/{template}" in names
    assert not any(n.startswith("synpo/prompt_templates") for n in names)


def test_repository_has_no_symlinks():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-s"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    links = [line.split("\t", 1)[1] for line in listing.splitlines() if line.startswith("120000 ")]
    assert links == [], f"symlinks in the repository (break on Windows checkouts and in sdists): {links}"


def test_extras_are_named_as_pip_finds_them_and_every_install_names_one():
    """Extra names written normalised (PEP 685): pip before 24 compares `.[alpaca_eval]` with the
    metadata's normalised `alpaca-eval` and installs nothing, silently. Every `.[extra]` that CI or
    the docs install must exist as written."""
    import re
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras, "no extras found"
    assert {e for e in extras if re.sub(r"[-_.]+", "-", e).lower() != e} == set()
    texts = [ROOT / ".ci" / "run", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    asked = {(p.name, name) for p in texts for group in re.findall(r"""["']?(?:\.|synpo)\[([^\]]+)\]""", p.read_text())
             for name in group.split(",")}
    assert asked, "no install command found"
    assert {(where, name) for where, name in asked if name.strip() not in extras} == set()
