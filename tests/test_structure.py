"""The shape of the code: no import cycle under app/, between modules or between packages; the web layer imports
no feature. Read from the source (ast), so an import inside a function or under TYPE_CHECKING counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
# The feature packages and top-level modules the web layer must not import (it serves them all).
FEATURES = ("app.admin", "app.chain", "app.findings", "app.github", "app.settings", "app.tokens", "app.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(APP.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of app/ and the modules of app/ it imports."""
    modules = {module_name(p): p for p in APP.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("app"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in modules else str(node.module))
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name.startswith("app.")}
    return {m: {t for t in targets if t in modules and t != m} for m, targets in graph.items()}


def package_of(module: str) -> str:
    """app.findings.service -> app.findings; a top-level module is its own unit."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (APP / parts[1]).is_dir() else module


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between packages (the `app` package itself, which wires everything up, left out)."""
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module == "app":
            continue
        unit = package_of(module)
        out.setdefault(unit, set()).update(package_of(t) for t in targets if t != "app" and package_of(t) != unit)
    return out


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_packages() -> None:
    assert cycles(packages(import_graph())) == []


def test_the_web_layer_imports_no_feature() -> None:
    graph = import_graph()
    web = {m: sorted(t for t in targets if t.startswith(FEATURES)) for m, targets in graph.items()}
    assert {m: t for m, t in web.items() if m.startswith("app.web") and t} == {}


@pytest.mark.parametrize(
    ("graph", "expected"),
    [({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]), ({"a": {"b"}, "b": set()}, [])],
    ids=["cycle", "none"],
)
def test_the_cycle_finder_finds_one(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected
