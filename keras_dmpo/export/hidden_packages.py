"""Hide installed packages from this process, as if they were not installed.

The TensorFlow export subprocess (``python -m keras_dmpo.export``) hides JAX
and torch: TensorFlow's tf.lite helpers try ``from jax import jit`` whenever
JAX is installed, and with some torch builds two frameworks in one process
crash. A ``None`` entry in ``sys.modules`` would stop the imports too, but
code that probes ``sys.modules`` (scipy's array-API helpers) fails on it;
hiding the packages from the path finder makes them look absent everywhere.

Standard library only.
"""

import importlib.machinery
import sys


def hide_packages(names):
    """Make the top-level packages ``names`` look uninstalled from now on.

    ``import NAME`` (or any submodule) raises ``ModuleNotFoundError`` and
    ``importlib.util.find_spec(NAME)`` returns None; other modules load as
    before.

    Raises:
        ValueError: when one of ``names`` is imported already (it is too
            late to hide it).
    """
    hidden = frozenset(names)
    loaded = sorted(name for name in sys.modules if name.partition(".")[0] in hidden)
    if loaded:
        raise ValueError(f"`names` {sorted(hidden)}: {loaded} are imported already; hide them first.")

    class PathFinderWithout(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            if fullname.partition(".")[0] in hidden:
                return None
            return super().find_spec(fullname, path, target)

    finders = sys.meta_path
    if importlib.machinery.PathFinder not in finders:
        raise RuntimeError("sys.meta_path has no PathFinder to filter; cannot hide packages.")
    finders[finders.index(importlib.machinery.PathFinder)] = PathFinderWithout
