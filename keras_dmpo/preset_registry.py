"""keras_dmpo's short preset names as the CLI, the demo and the benchmarks
see them: which are there, which one the demo tunes, and which classes a
shipped preset never saw.

The names themselves, their folders and defaults are in ``preset_catalog``
(which the models read without this module); they are re-exported here.
"""

import os

from keras_dmpo import preset_catalog
from keras_dmpo.preset_catalog import PRESET_DEFAULTS, PRESETS, preset_path, resolve

__all__ = [
    "DEMO_IMAGE_SIZE",
    "DEMO_PRESET",
    "HELD_OUT_CLASSES",
    "PRESETS",
    "PRESET_DEFAULTS",
    "preset_path",
    "resolve",
    "status",
    "target_classes",
]

# What `keras-dmpo demo` tunes by default (the README's main command), and at
# which size: 84 px is a 6x6 patch grid, about half the cost per image of
# preset_catalog.DINOV2_BENCHMARK_IMAGE_SIZE, so the demo stays within about
# 5 minutes on 2 CPU cores.
DEMO_PRESET = "dinov2_small_imgfocus"
DEMO_IMAGE_SIZE = 84

# Fashion-MNIST classes whose labels a shipped preset never saw (its source
# task used the others): demos and benchmarks on that data set tune on these,
# so the comparison is a real transfer (docs/data.md).
HELD_OUT_CLASSES = {
    ("dmpo_vit_tiny", "fashion_mnist"): [1, 3, 4, 6, 9]  # Trouser, Dress, Coat, Shirt, Ankle boot
}


def target_classes(preset, data):
    """Classes to use for ``data`` with ``preset`` (``None``: all of them)."""
    return HELD_OUT_CLASSES.get((str(preset), str(data).lower().replace("-", "_")))


def status():
    """``[(name, available, size_mb, description)]`` for every short name."""
    rows = []
    for name, description in PRESETS.items():
        if name in preset_catalog.FETCHABLE:
            available = preset_catalog.is_available(name)
            path = preset_catalog.preset_dir(name)
        else:
            path = preset_path(name)
            available = os.path.isfile(os.path.join(path, "config.json"))
        size = (
            sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6 if available else None
        )
        rows.append((name, available, size, description))
    return rows
