"""The package's layering, read from the source: the import graph (every ``import``, also those
inside functions) has no cycle, and nothing below the application imports it.

Not edges of the graph: importing a module's parent package (Python does it on the way) and the
root package ``uhved_tf``, which holds only ``__version__`` and lazy aliases of the Python API."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "uhved_tf"
#: The layers above the application: the command line, the Python API and the commands they run.
ABOVE_APPLICATION = {"uhved_tf.cli", "uhved_tf.api", "uhved_tf.export.commands", "uhved_tf.study",
                     "uhved_tf.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                found = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in found:
                while target and target not in modules:   # "pkg.mod.function" -> "pkg.mod"
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50
    assert cycles(graph) == []


def test_nothing_below_the_application_imports_it():
    importers = sorted(m for m, targets in import_graph().items()
                       if "uhved_tf.application" in targets and m not in ABOVE_APPLICATION)
    assert importers == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(set(import_graph()) - {"uhved_tf.__main__"}))
def test_every_module_imports_on_its_own(name):
    importlib.import_module(name)
