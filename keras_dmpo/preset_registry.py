"""keras_dmpo's short preset names, shipped inside the package."""

import os

_PRESET_DIR = os.path.join(os.path.dirname(__file__), "preset_files")

# short name -> description; ``keras_dmpo.presets`` is this dict.
PRESETS = {
    "dmpo_vit_tiny": (
        "ViT, 8 blocks x 128 wide, 28x28x3 input, patch 4 (49 patches), "
        "pre-trained on a source task that shares no labels with the targets; "
        "see docs/data.md."
    ),
}


def preset_path(name):
    """Directory of the shipped preset ``name``."""
    return os.path.join(_PRESET_DIR, name)


def resolve(preset):
    """Map a short name to its directory; other values are returned as given."""
    if preset in PRESETS:
        path = preset_path(preset)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(
                f"The shipped preset {preset!r} is missing from the installed "
                f"package (expected {path}/config.json). Reinstall keras-dmpo."
            )
        return path
    return preset
