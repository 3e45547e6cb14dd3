"""The layout's rules, read from the code's own imports: who may import what, and no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bot", "model_worker")
#: The worker's layers, lowest first: each may import only from the layers before it (and itself).
WORKER_LAYERS = ("wire", "model", "engine", "scheduling", "serve", "commands")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """What ``path`` imports, anywhere in the file (``TYPE_CHECKING`` blocks and functions included).
    ``from package import module`` counts as importing that module (of ``modules``), not the package."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, path)
            submodules = {f"{source}.{alias.name}" for alias in node.names} & modules
            names.update(submodules or {source})
    return names


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    parts = module_name(path).split(".")
    package = parts if path.name == "__init__.py" else parts[:-1]
    return ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {name: {imported for imported in imports_of(path, set(files)) if imported in files and imported != name}
            for name, path in files.items()}


def test_there_is_no_import_cycle(graph):
    cycles = []
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, f"import cycles: {cycles}"


def test_the_bot_imports_only_the_wire_package_of_the_worker(graph):
    leaks = sorted((name, imported) for name, imports in graph.items() if name.startswith("bot")
                   for imported in imports
                   if imported.startswith("model_worker") and not imported.startswith("model_worker.wire"))
    assert not leaks, leaks


def test_the_chat_core_imports_no_platform_sdk():
    offenders = []
    for path in (ROOT / "bot" / "chat").rglob("*.py"):
        for imported in imports_of(path):
            if imported.split(".")[0] in ("discord", "slack_bolt", "slack_sdk", "torch", "transformers", "timm"):
                offenders.append((module_name(path), imported))
    assert not offenders, offenders


def test_each_worker_layer_imports_only_the_layers_below_it(graph):
    def layer(name: str) -> int | None:
        parts = name.split(".")
        return WORKER_LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in WORKER_LAYERS else None

    upward = sorted((name, imported) for name, imports in graph.items() if layer(name) is not None
                    for imported in imports
                    if layer(imported) is not None and layer(imported) > layer(name))
    assert not upward, f"imports that run up the worker's layers {WORKER_LAYERS}: {upward}"
