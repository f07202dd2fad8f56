"""What DMPOClassifier's construction options mean: PEFT methods, input
normalisation, which exits get covariance heads, how the backbone is frozen,
and which preset implies which options."""

import numpy as np

from keras_dmpo import preset_catalog
from keras_dmpo.models.preset_preprocessing import preset_input_normalization
from keras_dmpo.models.vit_stages import load_vit_backbone

PEFT_METHODS = ("adapter", "lora", None)

# torchvision's ImageNet statistics, which DINOv2 (and most ViTs trained in
# PyTorch) expect after scaling pixels to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_input_normalization(value, channels):
    """``(scale, offset)`` arrays such that ``x * scale + offset`` normalises
    images in [0, 1], or None for no normalisation.

    Args:
        value: None, ``"imagenet"``, or a dict ``{"mean": [...], "std": [...]}``
            with one number or one per channel.
        channels: the image channels.
    """
    if value is None:
        return None
    if value == "imagenet":
        value = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise ValueError(
            "`input_normalization` must be None, 'imagenet' or a dict "
            f"{{'mean': [...], 'std': [...]}}; got {value!r}."
        )
    arrays = []
    for key in ("mean", "std"):
        array = np.asarray(value[key], dtype="float64").reshape(-1)
        if array.size == 1:
            array = np.repeat(array, channels)
        if array.size != channels or not np.all(np.isfinite(array)):
            raise ValueError(
                f"`input_normalization['{key}']` must be one finite number or "
                f"{channels} (one per channel); got {value[key]!r}."
            )
        arrays.append(array)
    mean, std = arrays
    if np.any(std <= 0):
        raise ValueError(f"`input_normalization['std']` must be > 0; got {value['std']!r}.")
    return (1.0 / std).astype("float32"), (-mean / std).astype("float32")


def resolve_covariance_exits(covariance_exits, exits, num_layers):
    """0-based positions in ``exits`` that get a covariance head.

    ``"early"``: exits in the first half of the depth (block <= num_layers / 2);
    ``"all"``; ``"none"``/``None``; or a list of 1-based exit *block numbers*
    that must appear in ``exits``.
    """
    if covariance_exits in (None, "none"):
        return ()
    if covariance_exits == "early":
        return tuple(i for i, e in enumerate(exits) if e <= num_layers / 2 and i < len(exits) - 1)
    if covariance_exits == "all":
        # Every exit but the last, which reads the backbone's final LayerNorm
        # through a linear head.
        return tuple(range(len(exits) - 1))
    if isinstance(covariance_exits, str):
        raise ValueError(
            "`covariance_exits` must be 'early', 'all', 'none' or a list of exit "
            f"block numbers; got {covariance_exits!r}."
        )
    positions = []
    for block in covariance_exits:
        if block == exits[-1]:
            raise ValueError(
                f"`covariance_exits` contains the last exit (block {block}); the last "
                "exit always uses the backbone's final LayerNorm and a linear head."
            )
        if block not in exits:
            raise ValueError(
                f"`covariance_exits` contains block {block}, which is not an exit; exits are {list(exits)}."
            )
        positions.append(exits.index(block))
    return tuple(sorted(positions))


def freeze_backbone(backbone, peft, lora_rank):
    """Freeze ``backbone``; with ``peft="lora"`` leave (or add) its LoRA weights trainable."""
    if peft == "lora":
        lora_layers = [
            layer
            for layer in backbone._flatten_layers(include_self=False)
            if getattr(layer, "lora_enabled", False)
        ]
        if lora_layers:  # rebuilt from a config that already has LoRA
            for layer in backbone._flatten_layers(include_self=False):
                layer.trainable = False
            for layer in lora_layers:
                layer.trainable = True
        else:
            backbone.enable_lora(lora_rank)
    else:
        backbone.trainable = False


def load_preset_backbone(preset, image_shape=None):
    """``(backbone, options)``: the preset's backbone and the DMPOClassifier
    options that go with it (the one place that says which preset needs which
    input normalisation).

    A short name's defaults (``preset_catalog.PRESET_DEFAULTS``) apply.
    Any other preset with a keras-hub image converter gets the converter's
    ``scale``/``offset`` as the ``input_normalization`` for [0, 1] images
    (``preset_preprocessing``); a DINOv2 backbone without one gets ImageNet
    normalisation, as it was trained with it. ``image_shape`` overrides the
    short name's default size.
    """
    defaults = dict(preset_catalog.PRESET_DEFAULTS.get(preset, {}))
    default_shape = defaults.pop("image_shape", None)
    backbone = load_vit_backbone(preset, image_shape=image_shape or default_shape)
    if "input_normalization" not in defaults:
        found, normalization = preset_input_normalization(preset, int(backbone.inputs[0].shape[-1]))
        if found:
            defaults["input_normalization"] = normalization
    if type(backbone).__name__ == "DINOV2Backbone":
        defaults.setdefault("input_normalization", "imagenet")
    return backbone, defaults
