"""The import graph of the project's packages, read statically with ``ast`` (nothing imported).

The rules of the layering (issue 21; docs/architecture.md): imports point one way
(``jobs -> pipeline -> stm_core``, ``stm_core`` without Ray or fsspec, ``schemas`` without
torch); the corpus job does not know the data engine (``pipeline.engine`` may use the job, never
the reverse: whoever starts a run resolves the engine's state and passes it in, see
``pipeline.engine.run_inputs``); no import cycle exists among ``pipeline``, ``stm_core``,
``schemas`` and ``jobs``; no module imports another's private names. Imports inside functions
count (they run too, only later); imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "stm_core", "schemas", "jobs")
# The labeling side: the job, the shard function its actors call, and the actor shell.
JOB_MODULES = ("pipeline.corpus_job", "pipeline.label_shard", "pipeline.label_actor")
ENGINE = "pipeline.engine"


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages (``a/__init__.py`` is
    ``a``)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST) -> list[tuple[int, str, str | None]]:
    """(level, module, name) of every import that runs: ``import a.b`` is (0, "a.b", None),
    ``from ..a import b`` is (2, "a", "b"). Skips the body of ``if TYPE_CHECKING:``."""
    found: list[tuple[int, str, str | None]] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
            elif isinstance(child, ast.Import):
                found.extend((0, alias.name, None) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.extend((child.level, child.module or "", a.name) for a in child.names)
            else:
                todo.append(child)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports. ``from a import b`` is module ``a.b`` when that
    is a module, else ``a``; an import outside the project is left out."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for level, module, imported in _imported_names(ast.parse(path.read_text())):
            if level:  # relative: level 1 is this package, 2 its parent, ...
                base = package[: len(package) - (level - 1)]
                module = ".".join([*base, module] if module else base)
            candidate = f"{module}.{imported}" if imported else module
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
        graph[name] = targets
    return graph


def import_path(graph: dict[str, set[str]], start: str, wanted: str) -> list[str] | None:
    """A chain of imports from ``start`` to a module in package ``wanted``, or None."""
    parents: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        module = queue.pop(0)
        if module == wanted or module.startswith(wanted + "."):
            chain = [module]
            while (parent := parents[chain[-1]]) is not None:
                chain.append(parent)
            return chain[::-1]
        for target in sorted(graph[module]):
            if target not in parents:
                parents[target] = module
                queue.append(target)
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``a -> b -> a`` as [a, b, a]) per back edge found by a depth-first search."""
    cycles = []
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_the_graph_sees_relative_function_level_and_type_checking_imports() -> None:
    graph = import_graph()
    assert set(JOB_MODULES) <= set(graph)
    # relative, and a submodule imported by name: `from . import ledger, table_io`
    assert {"pipeline.ledger", "pipeline.table_io"} <= graph["pipeline.corpus_job"]
    # inside a function: jobs/cli.py imports its commands' modules lazily
    assert "jobs.label_corpus" in graph["jobs.cli"]
    # the engine uses the job
    assert "pipeline.corpus_job" in graph["pipeline.engine.nightly"]
    # stm_core/__init__.py imports its exports only for type checkers (PEP 562 at run time)
    assert graph["stm_core"] == set()


@pytest.mark.parametrize("module", JOB_MODULES)
def test_the_corpus_job_does_not_import_the_data_engine(module: str) -> None:
    chain = import_path(import_graph(), module, ENGINE)
    assert chain is None, "imports the data engine: " + " -> ".join(chain or [])


def test_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_search_reports_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


# What each package may not import, at any depth of its modules (design.md, "Layers"):
# stm_core is one video and one model (no Ray, no fsspec, nothing above it); schemas is the
# contracts, importable without torch; pipeline never reaches up into the entrypoints. Neither
# imports torchvision: it pulls in torch._dynamo, seconds in every process that loads a model
# (stm_core.model.resnet builds the ResNets instead; tests/unit/test_resnet.py).
FORBIDDEN = {
    "stm_core": ("pipeline", "jobs", "ray", "fsspec", "s3fs", "gcsfs", "torchvision"),
    "schemas": ("pipeline", "jobs", "stm_core", "ray", "torch", "fsspec"),
    "pipeline": ("jobs", "torchvision"),
    "jobs": ("torchvision",),
}


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    bad = []
    for name, path in project_modules().items():
        if _top(name) != package:
            continue
        for level, module, _ in _imported_names(ast.parse(path.read_text())):
            if not level and _top(module) in FORBIDDEN[package]:
                bad.append(f"{name} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_module_imports_a_private_name_of_another() -> None:
    """``from x import _y`` couples a module to another's internals; a name used elsewhere is
    public (no leading underscore) or stays in its module."""
    bad = []
    for name, path in project_modules().items():
        for _, module, imported in _imported_names(ast.parse(path.read_text())):
            if imported and imported.startswith("_") and not imported.startswith("__"):
                bad.append(f"{name}: from {module or '.'} import {imported}")
    assert not bad, "\n".join(bad)
