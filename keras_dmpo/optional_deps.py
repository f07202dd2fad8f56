"""Optional dependencies: imported where they are used, with an error naming the extra.

Plotting, scikit-learn's digits, reading image folders, the ONNX tools and
the LiteRT quantizer are not installed with ``pip install keras-dmpo``; each comes with an extra (see
``[project.optional-dependencies]`` in pyproject.toml). Code that needs one
imports it through ``require``, so a user without it gets an ``ImportError``
that says what is missing, what for, and the command that installs it.

Example:

>>> from keras_dmpo.optional_deps import require
>>> require("numpy", "plot", "This example").__name__  # installed: the module
'numpy'
>>> require("no_such_package", "plot", "Plotting")  # doctest: +ELLIPSIS
Traceback (most recent call last):
ImportError: Plotting needs the optional package 'no_such_package', ... pip install "keras-dmpo[plot]"
"""

import importlib

# pyproject.toml's extras that ``require`` may name (tests check they match).
EXTRAS = ("plot", "digits", "images", "jax", "torch", "onnx", "quantize", "dev")

# Top-level import name -> the distribution that provides it, where they differ.
_DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "litert_quantizer": "litert-quantizer"}


def require(module_name, extra, purpose):
    """Import ``module_name`` and return it, or fail saying how to install it.

    Args:
        module_name: dotted module to import, e.g. ``"matplotlib.pyplot"``.
        extra: the keras-dmpo extra that installs it, e.g. ``"plot"``.
        purpose: what it is needed for, e.g. ``"EarlyExitCurve.plot"``.

    Returns:
        The imported module.

    Raises:
        ImportError: when the import fails; the message names the missing
            package, ``purpose`` and ``pip install "keras-dmpo[<extra>]"``.
        ValueError: for an ``extra`` that keras-dmpo does not define.

    Example:

    >>> Image = require("PIL.Image", "images", "Reading an image folder")
    >>> Image.new("RGB", (4, 4)).size
    (4, 4)
    """
    if extra not in EXTRAS:
        raise ValueError(f"`extra` must be one of {EXTRAS}; got {extra!r}.")
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        top = module_name.split(".")[0]
        package = _DISTRIBUTIONS.get(top, top)
        raise ImportError(
            f"{purpose} needs the optional package {package!r}, which is not "
            f"installed (import {module_name!r} failed: {error}). Install it "
            f'with: pip install "keras-dmpo[{extra}]"',
            name=module_name,
        ) from error
