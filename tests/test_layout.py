"""The package stays small and clear: no class over 300 lines, no function over 60, no import
cycle in worker/."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "worker"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text())
    return found


def test_no_class_over_300_lines_no_function_over_60():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1}"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.end_lineno - node.lineno + 1 > (300 if isinstance(node, ast.ClassDef) else 60)
    ]
    assert long == []


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """Modules of ours imported when the module is (not those under TYPE_CHECKING or in functions)."""
    deps = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.module:
                deps |= {sub.module, *(f"{sub.module}.{a.name}" for a in sub.names)}
            elif isinstance(sub, ast.Import):
                deps |= {a.name for a in sub.names}
    return deps & known


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) - {name} for name, tree in modules.items()}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for dep in graph[name]:
            if dep in path:
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in done:
                done.add(dep)
                visit(dep, [*path, dep])

    done: set[str] = set()
    for name in graph:
        visit(name, [name])
    assert cycles == []
