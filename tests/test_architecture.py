"""The package's layering, measured from its import graph (every ``import``, lazy ones included).

Rules (see ../shared/DESIGN.md and the layout in README's "Package layout"):
- no import cycle between modules of ``medssl``;
- ``report/`` reads results only: it imports no models, methods, engine, data, studies or inspection;
- the bottom layers (losses, transforms, models) know nothing of methods, engine, data or studies;
- nothing but the CLI imports ``inspection/`` (model-inspection tools).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "medssl"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the ``medssl`` modules it imports (``from a import b`` counts ``a.b`` if a module)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for w in graph[v]:
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


GRAPH = import_graph()


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "medssl"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from . import x\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from medssl.b import g\n")
    (pkg / "b.py").write_text("from medssl.a.x import f\n")
    graph = import_graph(pkg)
    assert graph["medssl.a"] == {"medssl.a.x"} and graph["medssl.a.x"] == {"medssl.b"}
    assert cycles(graph) == [["medssl.a.x", "medssl.b"]]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def _imports_from(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in GRAPH.items() if m == prefix or m.startswith(prefix + ".")}


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("medssl.report", ("medssl.models", "medssl.methods", "medssl.engine", "medssl.data", "medssl.studies",
                       "medssl.inspection", "medssl.registry", "medssl.eval")),
    ("medssl.losses", ("medssl.methods", "medssl.engine", "medssl.data", "medssl.studies", "medssl.models")),
    ("medssl.transforms", ("medssl.methods", "medssl.engine", "medssl.data", "medssl.studies",
                           "medssl.models")),
    ("medssl.models", ("medssl.methods", "medssl.engine", "medssl.data", "medssl.studies", "medssl.eval")),
    ("medssl.engine", ("medssl.methods", "medssl.data", "medssl.studies", "medssl.report", "medssl.eval")),
    ("medssl.data", ("medssl.engine", "medssl.models", "medssl.methods", "medssl.studies", "medssl.report")),
    ("medssl.stats", ("medssl.models", "medssl.methods", "medssl.engine", "medssl.data", "medssl.studies",
                      "medssl.report", "medssl.eval", "medssl.inspection", "medssl.registry",
                      "medssl.losses")),
])
def test_lower_layers_do_not_import_upper_ones(layer, forbidden):
    bad = {m: sorted(d for d in deps if d.startswith(forbidden)) for m, deps in _imports_from(layer).items()}
    assert {m: d for m, d in bad.items() if d} == {}


def test_only_the_cli_imports_export():
    users = {m for m, deps in GRAPH.items() if "medssl.export" in deps}
    assert users <= {"medssl.cli"}


def test_only_the_cli_imports_inspection():
    users = {m for m, deps in GRAPH.items() if any(d.startswith("medssl.inspection") for d in deps)}
    assert {m for m in users if not m.startswith("medssl.inspection")} <= {"medssl.cli"}
