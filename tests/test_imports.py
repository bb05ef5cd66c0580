"""The module graph of webslm/ has no cycle: each layer imports only the layers below it.

Every import counts, wherever it stands (top level, inside a function, under TYPE_CHECKING): a
deferred import hides a cycle from the interpreter, not from the reader.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = "webslm"

# Known cycles that another branch cuts, each as its sorted members. The test fails on any cycle
# not listed here, and on a listed one that is gone (so the entry is removed with the fix).
EXPECTED_CYCLES: frozenset[tuple[str, ...]] = frozenset()


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package by dotted name (a package is named by its __init__)."""
    return {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}


def imported_modules(tree: ast.Module, module: str, is_package: bool,
                     modules: Collection[str]) -> Iterator[str]:
    """The modules a module's imports name: `from a import b` names `a.b` when that is a
    module, else `a`; relative imports resolve against the module's package. (Importing `a.b`
    also runs `a`'s __init__; a package that imports its own submodules is no cycle, so that
    step is left out.)"""
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(part for part in (base, node.module or "") if part)
            for alias in node.names:
                name = f"{source}.{alias.name}"
                yield name if name in modules else source


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        named = imported_modules(tree, module, path.name == "__init__.py", modules.keys())
        graph[module] = {name for name in named if name in modules and name != module}
    return graph


def components(graph: Mapping[str, set[str]]) -> list[tuple[str, ...]]:
    """The modules that import one another, directly or around a loop (strongly connected
    components of more than one module, by Tarjan's walk), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[tuple[str, ...]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = [stack.pop()]
            while members[-1] != node:
                members.append(stack.pop())
            if len(members) > 1:
                found.append(tuple(sorted(members)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def cycle_from(graph: Mapping[str, set[str]], members: tuple[str, ...], start: str) -> list[str]:
    """The shortest import path from `start` back to itself inside a component (breadth
    first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for target in sorted(graph[node] & set(members)):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is on no cycle of {members}")


def describe(graph: Mapping[str, set[str]], members: tuple[str, ...]) -> str:
    """The component's shortest cycle, the one a reader cuts first, and all its members."""
    shortest = min((cycle_from(graph, members, start) for start in members), key=len)
    return " -> ".join(shortest) + f"  (all of: {', '.join(members)})"


def test_webslm_has_no_import_cycle() -> None:
    graph = import_graph(package_modules(REPO_ROOT, PACKAGE))
    found = components(graph)
    unexpected = [describe(graph, members) for members in found
                  if members not in EXPECTED_CYCLES]
    assert not unexpected, "import cycles in webslm/:\n" + "\n".join(unexpected)
    gone = sorted(EXPECTED_CYCLES - set(found))
    assert not gone, f"these expected cycles are gone, remove them from EXPECTED_CYCLES: {gone}"


def test_the_graph_sees_cycles_through_deferred_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle closed by a TYPE_CHECKING import and a relative one is found,
    and printed as the path that closes it."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.low import helper\n")
    (package / "low.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import Thing\n")
    (package / "sub" / "leaf.py").write_text("from . import other\n")
    (package / "sub" / "other.py").write_text("def f():\n    from .leaf import g\n")
    (package / "alone.py").write_text("import pkg.low\n")
    graph = import_graph(package_modules(tmp_path, "pkg"))
    assert [describe(graph, members) for members in components(graph)] == [
        "pkg.low -> pkg.sub -> pkg.low  (all of: pkg.low, pkg.sub)",
        "pkg.sub.leaf -> pkg.sub.other -> pkg.sub.leaf  (all of: pkg.sub.leaf, pkg.sub.other)",
    ]
