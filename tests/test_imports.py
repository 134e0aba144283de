"""Every module imports (catches undefined names and broken imports early), and imports run one way."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import lightalign

MODULES = sorted(m.name for m in pkgutil.walk_packages(lightalign.__path__, "lightalign."))
SRC = Path(lightalign.__file__).parent


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_recipes_are_not_importable():
    with pytest.raises(ImportError, match="never import from recipes"):
        importlib.import_module("recipes")


def module_files() -> dict[str, Path]:
    """``lightalign.eval.kl`` -> its file, for every module and package under src/lightalign."""
    files = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def import_graph() -> dict[str, set[str]]:
    """Which lightalign modules each lightalign module imports, read with ``ast`` (so imports inside functions,
    which run later but still tie the two modules together, count too). ``from pkg import name`` points at
    the submodule ``pkg.name`` when there is one, else at ``pkg``."""
    files = module_files()

    def known(name: str) -> str:
        while name not in files:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names if alias.name.split(".")[0] == "lightalign"}
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:  # relative: `from . import x`, `from ..data import y`
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                if source.split(".")[0] != "lightalign":
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    targets.add(full if full in files else known(source))
        graph[module] = targets - {module}
    return graph


def unit_of(module: str) -> str:
    """The top-level part of lightalign a module belongs to: ``lightalign.eval.kl`` -> ``lightalign.eval``."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph with each module replaced by its top-level package (edges inside one package dropped)."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(unit_of(module), set()).update(
            unit_of(t) for t in targets if unit_of(t) != unit_of(module)
        )
    return packages


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None if it is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # "active" while on the DFS stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "active"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "active":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    """``a -> b -> a``, each package arrow with the module import that makes it."""
    steps = []
    for source, target in zip(cycle, cycle[1:], strict=False):
        why = sorted(f"{m} imports {t}" for m, ts in graph.items() for t in ts
                     if unit_of(m) == source and unit_of(t) == target)
        steps.append(f"{source} -> {target}" + (f" ({why[0]})" if why and source != target else ""))
    return "; ".join(steps)


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = {"lightalign.eval.kl": {"lightalign.ppo.sampling"}, "lightalign.ppo.rollout": {"lightalign.eval.gen"}}
    assert find_cycle(graph) is None  # no module imports one that imports it back ...
    # ... but eval <-> ppo is a cycle of packages
    assert find_cycle(package_graph(graph)) == ["lightalign.eval", "lightalign.ppo", "lightalign.eval"]


def test_the_import_graph_sees_imports_inside_functions_and_from_packages():
    graph = import_graph()
    assert "lightalign.models.tiny" in graph["lightalign.models.loading"]  # imported inside a function
    assert "lightalign.eval.hooks" in graph["lightalign.eval"]  # the package's __init__


def test_no_module_imports_a_module_that_imports_it_back():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle)


def test_no_package_imports_a_package_that_imports_it_back():
    """eval/ may build on ppo/ or ppo/ on eval/, never both: each part of lightalign sits on the ones below it."""
    graph = import_graph()
    cycle = find_cycle(package_graph(graph))
    assert cycle is None, "import cycle between packages: " + describe(cycle, graph)
