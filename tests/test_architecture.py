"""The package's structure rules (docs/architecture.md), checked on the source.

- No module imports another module's private names (``from .run import _now``).
- No import cycles among module-level imports (imports inside functions load
  heavy libraries lazily and are not part of the structure).
- Every module opens with a docstring saying what it owns, and
  docs/architecture.md names every module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "psysim"


def modules() -> dict[str, ast.Module]:
    return {
        ".".join(path.relative_to(REPO).with_suffix("").parts): ast.parse(path.read_text("utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _target(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` node names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")[:-1]  # the module's package (a package's __init__ is in the package itself)
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def test_no_module_imports_another_modules_private_names():
    found = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _target(name, node).startswith("psysim"):
                found += [f"{name}: from {_target(name, node)} import {a.name}" for a in node.names if a.name.startswith("_")]
    assert not found


def test_module_level_imports_have_no_cycles():
    trees = modules()
    known = {n.removesuffix(".__init__") for n in trees}
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        here = name.removesuffix(".__init__")
        edges = graph.setdefault(here, set())
        for node in tree.body:  # module level only
            if isinstance(node, ast.ImportFrom) and _target(name, node).startswith("psysim"):
                target = _target(name, node)
                for alias in node.names:  # `from . import validation` names a module
                    edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("psysim"))
    for here in graph:
        graph[here] = {t for t in graph[here] if t in known and t != here and not here.startswith(t + ".")}

    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles


def test_every_module_says_what_it_owns_and_the_architecture_note_names_it():
    note = (REPO / "docs" / "architecture.md").read_text("utf-8")
    missing_doc, unnamed = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not ast.get_docstring(ast.parse(path.read_text("utf-8"))) and rel != "__main__.py":
            missing_doc.append(rel)
        if f"`{rel}`" not in note and path.name not in ("__main__.py",):
            unnamed.append(rel)
    assert not missing_doc
    assert not unnamed, f"docs/architecture.md does not name {unnamed}"


def test_the_relative_import_resolver():
    tree = ast.parse("from ..run import x\nfrom . import y\nfrom .lockstep import z\n")
    got = [_target("psysim.backends.hf", node) for node in tree.body]
    assert got == ["psysim.run", "psysim.backends", "psysim.backends.lockstep"]
    assert _target("psysim.backends.__init__", ast.parse("from ..errors import e").body[0]) == "psysim.errors"
    assert Path(PACKAGE / "__init__.py").is_file()
