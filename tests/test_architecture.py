"""The shape of the code: no import cycles, no private names reached across layers, and shipped
files that stand on the project's own documents.

What counts as one layer: each subpackage of synpo (synpo.engines, synpo.evals, synpo.scoring,
synpo.stages, synpo.training, synpo.toy, synpo.data) is one layer, whose modules may share
`_private` names among themselves; each top-level module (synpo.iterate, synpo.plan, synpo.models,
...) is a layer of its own, so its `_private` names are for it alone.

Imports are read with `ast` from every module under synpo/, at module level and inside functions
(the deferred imports of heavy libraries are imports all the same: a cycle through them still
couples the two modules, it only fails later). `import a.b` and `from a.b import c` are edges to
the module a.b, or to a.b.c when c is itself a module. Importing a submodule also runs its
package's __init__, but that implicit edge is not counted: a package's __init__ may import its
own modules.

Shipped files (synpo/, docs/, README.md, ARCHITECTURE.md, prompts/, recipes/) must not cite a
DESIGN.md or ../shared: neither is part of the project a user gets.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "synpo"

# Known exceptions, each naming exactly what is wrong (none today): fix the code, then delete the
# entry (a stale entry fails the test too).
# The modules of one import cycle, sorted (a smaller cycle inside one of these passes):
KNOWN_CYCLES: list[tuple[str, ...]] = []
# (importing module, the private name it imports):
KNOWN_PRIVATE_IMPORTS: list[tuple[str, str]] = []
# (file relative to the root, what it cites):
KNOWN_FOREIGN_CITATIONS: list[tuple[str, str]] = []


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def imported_names(name: str, source: str | None = None) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import of a synpo module in module `name` (its
    file, or `source`); relative imports are resolved against the module's package."""
    path = MODULES.get(name)
    source = path.read_text(encoding="utf-8") if source is None else source
    package = name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, str(path or name))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found += [(base, alias.name) for alias in node.names]
    return [(module, alias) for module, alias in found if module == "synpo" or module.startswith("synpo.")]


def target_module(module: str, alias: str | None) -> str:
    """The synpo module an import loads: `from synpo import templates` loads synpo.templates."""
    if alias and f"{module}.{alias}" in MODULES:
        return f"{module}.{alias}"
    while module not in MODULES:  # `import synpo.x.y` of a name that is not a module: its nearest module
        module = module.rpartition(".")[0]
    return module


def import_graph() -> dict[str, set[str]]:
    return {name: {target_module(m, a) for m, a in imported_names(name)} - {name} for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_path(graph: dict[str, set[str]], component: tuple[str, ...]) -> list[str]:
    """One closed walk through the component, for the failure message: a -> b -> ... -> a."""
    inside = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth-first back to start, inside the component
        v = queue.pop(0)
        for w in sorted(graph[v] & inside):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return list(component)


def layer(module: str) -> str:
    """synpo.evals.judged -> synpo.evals; synpo.plan -> synpo.plan (see the module docstring)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_across_layers(importer: str, module: str, alias: str | None) -> bool:
    """Whether `importer` reaches a private module or name of another layer."""
    target = f"{module}.{alias}" if alias else module
    return layer(target) != layer(importer) and any(is_private(part) for part in target.split(".")[1:])


def private_imports() -> list[tuple[str, str]]:
    """(importer, dotted private name) for each private module or name imported across layers."""
    return sorted({(name, f"{module}.{alias}" if alias else module) for name in MODULES
                   for module, alias in imported_names(name) if private_across_layers(name, module, alias)})


SHIPPED = ["synpo", "docs", "README.md", "ARCHITECTURE.md", "prompts", "recipes"]
FOREIGN = ["DESIGN.md", "../shared"]


def foreign_citations() -> list[tuple[str, str]]:
    """(file, cited thing) for shipped files that point at documents or data outside the project."""
    found = []
    for entry in SHIPPED:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts:
                continue
            data = file.read_bytes()
            found += [(file.relative_to(ROOT).as_posix(), needle) for needle in FOREIGN if needle.encode() in data]
    return found


def test_the_graph_sees_deferred_and_relative_imports():
    """The reader itself: a function-level import is an edge, and `from synpo import x` reaches synpo.x."""
    graph = import_graph()
    assert "synpo.models" in graph["synpo.engines.hf"]  # imported inside HFEngine.__init__
    source = "def f():\n    from synpo import templates\n    from .judge import parse_rating\n    from .. import io\n"
    imports = imported_names("synpo.evals.judged", source)
    assert imports == [("synpo", "templates"), ("synpo.evals.judge", "parse_rating"), ("synpo", "io")]
    assert [target_module(m, a) for m, a in imports] == ["synpo.templates", "synpo.evals.judge", "synpo.io"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]
    assert cycle_path({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ("a", "b", "c")) == ["a", "b", "c", "a"]
    assert layer("synpo.evals.judged") == "synpo.evals" and layer("synpo.plan") == "synpo.plan"
    assert private_across_layers("synpo.engines.vllm", "synpo.stages.train", "_accelerate_command")
    assert private_across_layers("synpo.plan", "synpo.stages._layout", "run_dir")  # a private module
    assert private_across_layers("synpo.plan", "synpo.recipe", "_check_files")  # top-level modules: one each
    assert not private_across_layers("synpo.evals.judged", "synpo.evals.judge", "_verdict")  # inside a package
    assert not private_across_layers("synpo.plan", "synpo.recipe", "load_recipe")


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    new = [c for c in found if not any(set(c) <= set(known) for known in KNOWN_CYCLES)]
    assert not new, "import cycles:\n" + "\n".join(" -> ".join(cycle_path(graph, c)) for c in new)
    stale = [k for k in KNOWN_CYCLES if not any(set(c) <= set(k) for c in found)]
    assert not stale, f"these cycles are gone: delete them from KNOWN_CYCLES: {stale}"


def test_no_private_names_imported_across_layers():
    found = private_imports()
    new = [v for v in found if v not in KNOWN_PRIVATE_IMPORTS]
    assert not new, "private names imported from another layer (make them public, or move them):\n" + "\n".join(
        f"{importer} imports {name}" for importer, name in new)
    stale = [k for k in KNOWN_PRIVATE_IMPORTS if k not in found]
    assert not stale, f"fixed: delete from KNOWN_PRIVATE_IMPORTS: {stale}"


def test_shipped_files_cite_nothing_outside_the_project():
    found = foreign_citations()
    new = [v for v in found if v not in KNOWN_FOREIGN_CITATIONS]
    assert not new, "shipped files citing documents or data outside the project:\n" + "\n".join(
        f"{file}: {needle}" for file, needle in new)
    stale = [k for k in KNOWN_FOREIGN_CITATIONS if k not in found]
    assert not stale, f"fixed: delete from KNOWN_FOREIGN_CITATIONS: {stale}"
