"""The input normalisation a keras-hub preset's own image converter implies.

A keras-hub ``ImageConverter`` takes pixels ``p`` in [0, 255] and returns
``p * scale + offset`` (``scale`` and ``offset`` one number or one per
channel, either may be None). keras_dmpo's models take images ``x`` in
[0, 1], so ``p = 255 * x`` and the converter computes
``x * (255 * scale) + offset``, which is ``(x - mean) / std`` with
``std = 1 / (255 * scale)`` and ``mean = -offset * std``: the
``input_normalization`` form ``DMPOClassifier`` applies inside stage 1.
"""

import os
import warnings

import numpy as np

from keras_dmpo import preset_catalog

# Closer than this to (x - 0) / 1 is no normalisation at all.
_IDENTITY_TOLERANCE = 1e-6


def is_short_name_preset(preset):
    """Whether ``preset`` is a keras_dmpo short name or one of their folders
    (their options come from ``preset_catalog.PRESET_DEFAULTS``, not from a
    converter; the shipped ``dmpo_vit_tiny``'s converter keeps [0, 1] images
    as they are)."""
    if not isinstance(preset, (str, os.PathLike)):
        return False
    preset = os.fspath(preset)
    if preset in preset_catalog.PRESETS:
        return True
    if not os.path.isdir(preset):
        return False
    folders = [preset_catalog.preset_path(name) for name in preset_catalog.PRESETS]
    folders += [preset_catalog.preset_dir(name) for name in preset_catalog.FETCHABLE]
    real = os.path.realpath(preset)
    return any(real == os.path.realpath(folder) for folder in folders)


def load_image_converter(preset):
    """The preset's keras-hub ``ImageConverter``, or None when it has none
    (or keras-hub cannot build one for it)."""
    import keras_hub

    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError):
        converter = None
    if converter is None:
        # A preset with a preprocessor.json but no image_converter.json.
        try:
            preprocessor = keras_hub.models.ImageClassifierPreprocessor.from_preset(preset)
            converter = getattr(preprocessor, "image_converter", None)
        except (OSError, ValueError, KeyError, TypeError, NotImplementedError):
            converter = None
    return converter


def converter_input_normalization(converter, channels):
    """``{"mean": ..., "std": ...}`` for images in [0, 1] equivalent to
    ``converter`` on pixels in [0, 255]; None when it is the identity on
    [0, 1] images.

    Raises:
        ValueError: when the converter's scale/offset are not one number or
            ``channels`` numbers, are not finite, or a scale is not > 0 (no
            ``(x - mean) / std`` with ``std > 0`` matches it).
    """
    values = {}
    for key, missing in (("scale", 1.0), ("offset", 0.0)):
        value = getattr(converter, key, None)
        array = np.asarray(missing if value is None else value, dtype="float64").reshape(-1)
        if array.size not in (1, channels) or not np.all(np.isfinite(array)):
            raise ValueError(
                f"the image converter's {key}={value!r} is not one finite number or {channels} of them"
            )
        values[key] = array
    if np.any(values["scale"] <= 0):
        raise ValueError(f"the image converter's scale={converter.scale!r} is not > 0")
    std = 1.0 / (255.0 * values["scale"])
    mean = -values["offset"] * std
    std, mean = np.broadcast_arrays(std, mean)
    if np.all(np.abs(mean) < _IDENTITY_TOLERANCE) and np.all(np.abs(std - 1.0) < _IDENTITY_TOLERANCE):
        return None

    def as_option(array):
        return float(array[0]) if array.size == 1 else [float(v) for v in array]

    return {"mean": as_option(mean), "std": as_option(std)}


def preset_input_normalization(preset, channels):
    """``(found, input_normalization)`` from ``preset``'s image converter.

    ``found`` is False (and the value None) when the preset has no converter
    or is a keras_dmpo short name; an unusable converter warns and counts
    as none.
    """
    if is_short_name_preset(preset):
        return False, None
    converter = load_image_converter(preset)
    if converter is None:
        return False, None
    try:
        return True, converter_input_normalization(converter, channels)
    except ValueError as error:
        warnings.warn(
            f"Ignoring the image converter of preset {preset!r}: {error}. "
            "Pass `input_normalization=` to normalise the images.",
            stacklevel=3,
        )
        return False, None
