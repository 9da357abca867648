"""The engine's import graph: no module of pet_core imports one that imports it back (lazily or not),
module-level imports form no cycle, and pet_core never imports streamlit."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pet_core"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return []


def _graph(*, lazy: bool) -> dict[str, set[str]]:
    """Module -> the pet_core modules it imports (a submodule's import also runs its packages'
    ``__init__``). ``lazy``: imports inside functions count too; ``if TYPE_CHECKING`` never does."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = [ast.Pass()]
        for node in (ast.walk(tree) if lazy else tree.body):
            for target in _imported(node):
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    q = ".".join(parts[:i])
                    if q in mods and q != name and not name.startswith(q + "."):
                        graph[name].add(q)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_graph_sees_real_imports():
    graph = _graph(lazy=False)
    assert "pet_core.encoding" in graph["pet_core.size"]
    assert "pet_core.methods" in graph["pet_core.steps"]


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph(lazy=True)
    pairs = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph[b]})
    assert pairs == [], pairs


def test_module_level_imports_form_no_cycle():
    assert _cycle(_graph(lazy=False)) is None


def test_the_engine_never_imports_streamlit():
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            assert not any(t.split(".")[0] == "streamlit" for t in _imported(node)), name
