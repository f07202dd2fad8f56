"""The package's import graph: no cycles, and imports of the package's own
modules at module level only, except in the command-line entry point.

Parses the source (nothing is imported), so it runs in milliseconds on every
backend.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_dmpo"
# Modules allowed to import the package's Keras-based modules inside
# functions: the CLI must set KERAS_BACKEND (--backend) before Keras is first
# imported. The package namespace itself is lazy (importlib) for the same
# reason and for `import keras_dmpo.litert` without Keras.
LAZY_BY_DESIGN = {"keras_dmpo.cli"}


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules():
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def own_imports(tree, known, current):
    """``(target module, lineno, inside_function)`` for each import of a package module."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports pkg.sub when sub is a module.
            targets = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                for alias in node.names
            ]
        for target in targets:
            if target.startswith("keras_dmpo") and target in known and target != current:
                found.append((target, node.lineno, id(node) in inside))
    return found


def import_graph():
    known = modules()
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = own_imports(tree, known, name)
    return graph


def find_cycle(edges):
    """One cycle as a list of modules, or None (iterative DFS, three colours)."""
    colour = dict.fromkeys(edges, 0)
    for root in edges:
        if colour[root]:
            continue
        stack = [(root, iter(edges[root]))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif colour.get(child) == 0:
                colour[child] = 1
                stack.append((child, iter(edges[child])))
                path.append(child)
    return None


def package_edges(graph):
    """Module -> imported modules, without the package ``__init__`` files
    (which only re-export what their modules define)."""
    return {
        name: sorted({t for t, _, _ in imports if not _is_package(t)})
        for name, imports in graph.items()
        if not _is_package(name)
    }


def _is_package(name):
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30  # parsed the package, not an empty folder
    cycle = find_cycle(package_edges(graph))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_own_modules_are_imported_at_module_level():
    lazy = [
        f"{name}:{line} imports {target}"
        for name, imports in import_graph().items()
        if name not in LAZY_BY_DESIGN
        for target, line, inside_function in imports
        if inside_function
    ]
    assert not lazy, "function-level imports of keras_dmpo modules:\n" + "\n".join(lazy)


@pytest.mark.parametrize("module", ["keras_dmpo.policy", "keras_dmpo.litert"])
def test_the_runtime_side_imports_no_keras_module(module):
    """What a phone-side user imports reaches only numpy-level modules."""
    graph, seen, todo = import_graph(), set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(t for t, _, _ in graph[name])
    allowed = {"keras_dmpo.version", "keras_dmpo.atomic_io", "keras_dmpo.optional_deps"}
    runtime = {
        name for name in seen if name.split(".")[:2] in (["keras_dmpo", "litert"], ["keras_dmpo", "policy"])
    }
    assert seen - runtime <= allowed, sorted(seen - runtime - allowed)
