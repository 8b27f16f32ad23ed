"""The documents a newcomer reads: their links resolve, their recipe overrides are valid, and CI runs
the README's two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from synpo.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "prompts" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(doc):
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and anchor not in _anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.name}")
    assert not broken, broken


def _overrides(text: str) -> set[str]:
    """`--set KEY=VALUE` in commands, and `key.path=value` quoted inline (the tables' variants)."""
    found = set(re.findall(r"--set ([a-z_]+(?:\.[a-z_]+)*=[^\s`\\]+)", text))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # a fence's backticks would pair with inline ones
    for quoted in re.findall(r"`([^`]+)`", prose):
        found.update(w for w in quoted.split() if re.fullmatch(r"[a-z_]+(?:\.[a-z_]+)+=[^\s=]+", w))
    # placeholders (N, DATA_DIR, ...) stand for the reader's value
    found = {o.rstrip(",;") for o in found}
    return {o for o in found if not re.fullmatch(r"[A-Z_]+|\.\.\.", o.split("=", 1)[1])}


def test_every_documented_override_is_a_valid_recipe_key_and_value():
    overrides = sorted(set().union(*(_overrides(d.read_text(encoding="utf-8")) for d in DOCS)))
    assert len(overrides) > 15  # the tables of variants and the commands were found
    bad = []
    for override in overrides:
        try:
            load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", [override], check_files=False)
        except Exception as e:  # noqa: BLE001 - every failure is reported with its override
            bad.append(f"{override}: {e}")
    assert not bad, bad


def test_ci_runs_the_readme_install_command_then_its_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    install = next(b.strip() for b in blocks if b.startswith("pip install"))
    test = next(b.strip() for b in blocks if "pytest" in b)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_path_of_one_machine_in_the_docs(doc):
    found = re.findall(r"(?<![\w.~])/(?:work|home|Users|root|mnt|scratch)/[\w./-]+", doc.read_text())
    assert found == [], f"{doc.name}: paths of one machine: {found}"


def test_every_row_of_the_readme_table_is_the_command_with_its_sets():
    """Each row of the README's results table names the --set options that make its run from the
    main command; they load, and the SimPO row's are the β and γ docs/ablations.md measured."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| run | round 0 |", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert len(rows) >= 5
    for row in rows[1:]:
        sets = re.findall(r"--set ([\w.]+=[\w.]+)", row)
        assert sets, row
        recipe = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", sets)
        if "SimPO" in row:
            assert (recipe.train.loss, recipe.train.beta, recipe.train.gamma) == ("simpo", 2.0, 1.0)
