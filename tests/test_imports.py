"""The library's imports flow one way (issue 17): no circle, and each layer imports only
from the layers below it.

    errors  <-  config  <-  files, net, runtime, ops  <-  data, features, models, ...  <-  train  <-  pipeline, scripts

Read statically from the source (every ``import`` statement, also those inside functions,
so a lazy import cannot hide a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEA = ROOT / "sea"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(SEA.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """The ``sea`` modules ``path`` imports (``from sea.x import y`` counts ``sea.x.y`` when
    that is a module, else ``sea.x``), wherever the statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "sea":
            names = [f"{node.module}.{a.name}" for a in node.names]
            subs = [n for n in names if n in MODULES]
            found.update(subs)
            if len(subs) < len(names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "sea")
    own = module_name(path) if path.is_relative_to(ROOT) else None  # a package's __init__ is not its own dependency
    return {m for m in found if m in MODULES and m != own}


GRAPH = {name: imported(path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle found by a depth-first walk (each reported once, from where it closes)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def test_the_walker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_walker_sees_imports_inside_functions(tmp_path):
    p = SEA / "config.py"
    assert "sea.errors" in imported(p)
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from sea.models import base\n    import sea.train\n")
    assert imported(lazy) >= {"sea.models.base", "sea.train"}


def test_no_import_circle_in_sea():
    assert cycles(GRAPH) == []


#: Each low layer and what it may import from ``sea`` (the higher layers are free to import
#: anything below them, which the no-circle test keeps honest).
ALLOWED = {
    "sea.errors": set(),
    "sea.config": {"sea.errors"},
    "sea.files": {"sea.errors"},
    "sea.ops": set(),
}


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_low_layers_import_only_below_them(module):
    assert GRAPH[module] <= ALLOWED[module], f"{module} imports {sorted(GRAPH[module] - ALLOWED[module])}"


def test_net_imports_nothing_of_the_science():
    net = {m: deps for m, deps in GRAPH.items() if m == "sea.net" or m.startswith("sea.net.")}
    assert net, "sea/net is gone?"
    for m, deps in net.items():
        outside = {d for d in deps if not (d in ("sea.errors", "sea.files") or d.startswith("sea.net"))}
        assert not outside, f"{m} imports {sorted(outside)}"


def test_nothing_in_the_library_imports_the_stages_or_scripts():
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in ("pipeline", "scripts", "tests", "bench"), name
