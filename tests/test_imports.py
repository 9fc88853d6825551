"""The package's import structure, read from the code: no circle, and every import runs down a floor (or stays).

Floors, top to bottom (docs/internals.md, "Layout"): the command line; bench; the steps (train, evaluate,
inference, analyses, report, tracking); the file owners (checkpoint, outputs, data, config); models; io and device.
Lazy imports inside functions count like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS: list[tuple[str, ...]] = [  # top first; a module may import its own floor or any floor below it
    ("sdn.cli", "sdn.__main__", "sdn.commands"),
    ("sdn.bench", "sdn.bench_latency", "sdn.reproduce"),
    (
        "sdn.train",
        "sdn.evaluate",
        "sdn.inference",
        "sdn.graphed_inference",
        "sdn.export_onnx",
        "sdn.onnx_exit_graph",
        "sdn.bucketed_inference",
        "sdn.graphs",
        "sdn.reference",
        "sdn.analysis",
        "sdn.report",
        "sdn.tracking",
        "sdn.predict",
        "sdn.exit_policy",
    ),
    ("sdn.checkpoint", "sdn.outputs", "sdn.data", "sdn.config", "sdn.config_checks"),
    ("sdn.models",),
    ("sdn.io", "sdn.device", "sdn"),
]
PURE_ANALYSIS_MAY_NOT_IMPORT = ("sdn.data", "sdn.checkpoint", "sdn.train", "sdn.evaluate", "sdn.io")


def _modules() -> dict[str, Path]:
    found = {}
    for file in (ROOT / "sdn").rglob("*.py"):
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = file
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The sdn modules ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sdn"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("sdn")}
    out.discard(name)
    return {m for m in out if m in MODULES}


GRAPH = {name: _imports(name) for name in MODULES}


def _floor(name: str) -> int:
    best = None
    for index, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{name} is on no floor; add it to FLOORS (and to docs/internals.md)"
    return best[0]


def _circles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
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

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    assert _circles() == []


def test_every_module_is_on_a_floor_and_imports_only_down() -> None:
    upward = [f"{name} -> {target}" for name in GRAPH for target in GRAPH[name] if _floor(target) < _floor(name)]
    assert upward == []


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("sdn.analysis")))
def test_analyses_are_pure_functions_of_arrays(name: str) -> None:
    files = [t for t in GRAPH[name] if t.startswith(PURE_ANALYSIS_MAY_NOT_IMPORT)]
    assert files == [], f"{name} reaches for files or training: {files}"


def test_only_tracking_imports_mlflow() -> None:
    users = set()
    for name, file in MODULES.items():
        for node in ast.walk(ast.parse(file.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                users.add(name)
    assert users == {"sdn.tracking"}


def test_no_test_imports_another() -> None:
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")} | {"conftest"}
    offenders = []
    for file in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{file.name} imports {n}" for n in names if n in tests]
    assert offenders == []
