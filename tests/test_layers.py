"""The product's import graph, read from the source (no imports run): three layers imported only downwards
(vae_core <- registry <- jobs), and no two product modules importing each other, not even for type checking
(docs/decisions.md, "Where things live")."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("vae_core", "registry", "jobs")  # each may import only itself and those before it


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, *, in_functions: bool) -> set[str]:
    """Product modules `path` imports at module level (TYPE_CHECKING blocks included), and in functions too."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if in_functions:
                    visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return {name for name in found if name.split(".")[0] in LAYERS}


MODULES = {module_name(path): path for layer in LAYERS for path in sorted((REPO / layer).rglob("*.py"))}


def test_layers_import_only_downwards():
    wrong = [
        f"{module} imports {name}"
        for module, path in MODULES.items()
        for name in imported(path, in_functions=True)
        if LAYERS.index(name.split(".")[0]) > LAYERS.index(module.split(".")[0])
    ]
    assert wrong == []


def test_no_import_cycle_between_product_modules():
    graph = {
        module: {name for name in imported(path, in_functions=False) if name in MODULES and name != module}
        for module, path in MODULES.items()
    }
    cycles, visiting, done = [], [], set()

    def walk(module: str) -> None:
        visiting.append(module)
        for target in sorted(graph[module]):
            if target in visiting:
                cycles.append(" -> ".join([*visiting[visiting.index(target) :], target]))
            elif target not in done:
                walk(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            walk(module)
    assert len(graph) > 40 and cycles == []
