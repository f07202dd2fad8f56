"""The package's import graph: no cycles, and imports of the package's own
modules at module level only, except in the command-line entry point.

The graph checks parse the source (nothing is imported), so they run in
milliseconds on every backend; the run-time checks import in a fresh process.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

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


def reachable(graph, roots):
    """Every module reachable from ``roots``, function-level imports included."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(t for t, _, _ in graph[name])
    return seen


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
    seen = reachable(import_graph(), [module])
    # hashing, not atomic_io: the runtime must load where fcntl is missing.
    allowed = {"keras_dmpo.version", "keras_dmpo.hashing", "keras_dmpo.optional_deps"}
    runtime = {
        name for name in seen if name.split(".")[:2] in (["keras_dmpo", "litert"], ["keras_dmpo", "policy"])
    }
    assert seen - runtime <= allowed, sorted(seen - runtime - allowed)


# Download, data set and conversion code: the models resolve preset names
# through preset_catalog (a table and paths) and must work without these.
NOT_FOR_MODELS = {
    "keras_dmpo.archives",
    "keras_dmpo.datasets",
    "keras_dmpo.dinov2_onnx",
    "keras_dmpo.image_folders",
    "keras_dmpo.preset_fetch",
    "keras_dmpo.preset_registry",
}


def test_the_models_reach_no_download_dataset_or_conversion_module():
    graph = import_graph()
    models = [name for name in graph if name.split(".")[:2] == ["keras_dmpo", "models"]]
    assert "keras_dmpo.models.vit_stages" in models
    for name in models:
        found = sorted(reachable(graph, [name]) & NOT_FOR_MODELS)
        assert not found, f"{name} imports (directly or through others) {found}"


def _run_python(code, **env):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_models_loads_no_download_dataset_or_conversion_module():
    """The same, at run time: import every module of keras_dmpo.models (on
    this backend) in a fresh process and look at sys.modules."""
    loaded = _run_python(
        """
        import importlib, json, pkgutil, sys
        import keras_dmpo.models
        for info in pkgutil.iter_modules(keras_dmpo.models.__path__, "keras_dmpo.models."):
            importlib.import_module(info.name)
        print(json.dumps(sorted(sys.modules)))
        """
    )
    assert "keras_dmpo.models.vit_stages" in loaded
    assert not NOT_FOR_MODELS & set(loaded), sorted(NOT_FOR_MODELS & set(loaded))


def test_the_litert_runtime_works_without_fcntl_and_ctypes():
    """``import keras_dmpo.litert`` and opening a bundle (manifest and sha256
    checks) with fcntl and ctypes blocked, as where they do not exist; then a
    prediction (LiteRT itself needs ctypes, so it is unblocked for that). No
    Keras, TensorFlow or file-lock module gets imported."""
    bundle = pathlib.Path(__file__).resolve().parent / "data" / "format1" / "bundle"
    report = _run_python(
        f"""
        import json, sys
        sys.modules["fcntl"] = None  # `import fcntl` now raises ImportError
        sys.modules["ctypes"] = None
        import numpy as np
        import keras_dmpo.litert
        from keras_dmpo.litert import StagedRuntime
        runtime = StagedRuntime({str(bundle)!r}, num_threads=1, verify_hashes=True)
        del sys.modules["ctypes"]
        images = np.random.default_rng(0).uniform(size=(2, *runtime.image_shape)).astype("float32")
        out = runtime.predict(images)
        heavy = ["keras", "tensorflow", "keras_hub", "keras_dmpo.atomic_io"]
        print(json.dumps({{
            "labels": out["labels"].tolist(),
            "fcntl": sys.modules["fcntl"] is None,
            "imported": [m for m in heavy if m in sys.modules],
        }}))
        """
    )
    assert len(report["labels"]) == 2
    assert report["fcntl"], "fcntl got imported"
    assert report["imported"] == []
