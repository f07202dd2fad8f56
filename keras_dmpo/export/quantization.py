"""What an export's ``quantization`` argument means, checked before anything converts.

Two families of modes. The TFLite converter's (``None``, ``"dynamic"``,
``"float16"``, ``"int8"``) quantize while converting. The LiteRT quantizer's
(``keras_dmpo.export.quantizer``: a named recipe, or a recipe of the user's
own as a list of rules, recorded as ``"custom"``) rewrite the float32 graphs
after conversion. Both may need calibration images: ``"int8"`` and every
recipe with static (integer) activations.
"""

import collections

import numpy as np

from keras_dmpo.export import quantizer
from keras_dmpo.litert.manifest import CONVERTER_QUANTIZATIONS, CUSTOM_RECIPE, QUANTIZER_RECIPES

# Fewest calibration images a quantizer recipe with static activations
# accepts. Each activation range is the min and max over the calibration
# images (quantizer.calibrate), and a new image falls outside the range of n
# exchangeable ones with probability 2 / (n + 1): about 6% of images clip a
# given tensor with 32, 22% with 8. A floor against a mistake (say, one
# image), not a recommendation: use 100-500 typical images.
MIN_CALIBRATION_IMAGES = 32

Quantization = collections.namedtuple("Quantization", ["name", "recipe", "needs_calibration"])
Quantization.__doc__ = """A resolved ``quantization`` argument.

``name`` is what the manifest records (a converter mode, a recipe name or
``"custom"``); ``recipe`` the quantizer's rules (``None`` for a converter
mode); ``needs_calibration`` whether calibration images are required."""


def resolve_quantization(quantization):
    """Check an export's ``quantization`` argument and say what it means.

    Args:
        quantization: ``None`` (float32); a converter mode ``"dynamic"``,
            ``"float16"`` or ``"int8"``; a named LiteRT quantizer recipe
            (``keras_dmpo.export.quantizer.RECIPES``: ``"weight_only_int8"``,
            ``"weight_only_int4"``, ``"dynamic_int8"``,
            ``"dynamic_int4_blockwise"``, ``"static_int8"``,
            ``"static_int16"``, ``"mixed"``, ``"int8_matmuls"``); or a recipe of your own, a list
            of the quantizer's rules (see ``keras_dmpo.export.quantizer``).

    Returns:
        A ``Quantization(name, recipe, needs_calibration)``.

    Raises:
        ValueError: for anything else, naming ``quantization``.
        ImportError: for a recipe without ``litert-quantizer`` installed
            (the ``quantize`` extra).

    Example:

    >>> resolve_quantization("int8")
    Quantization(name='int8', recipe=None, needs_calibration=True)
    >>> mode = resolve_quantization("mixed")
    >>> mode.name, mode.needs_calibration, len(mode.recipe)
    ('mixed', True, 8)
    >>> resolve_quantization("int4")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: `quantization` must be one of (None, 'dynamic', 'float16', 'int8', 'weight_only_int8', ...
    """
    if quantization is None or (isinstance(quantization, str) and quantization in CONVERTER_QUANTIZATIONS):
        return Quantization(quantization, None, quantization == "int8")
    if isinstance(quantization, str) and quantization in QUANTIZER_RECIPES:
        recipe = quantizer.named_recipe(quantization)
        return Quantization(quantization, recipe, quantizer.needs_calibration(recipe))
    if isinstance(quantization, (list, tuple)):
        recipe = quantizer.check_recipe(quantization)
        return Quantization(CUSTOM_RECIPE, recipe, quantizer.needs_calibration(recipe))
    raise ValueError(
        f"`quantization` must be one of {CONVERTER_QUANTIZATIONS + QUANTIZER_RECIPES} or a LiteRT quantizer "
        f'recipe (a list of rule dicts {{"regex", "operation", "algorithm_key", "op_config"}}); '
        f"got {quantization!r}."
    )


def check_calibration_data(representative_data, image_shape, mode):
    """The calibration images as float32 when ``mode`` needs them, else None.

    Args:
        representative_data: ``(N, H, W, C)`` model-space images, or None.
        image_shape: ``(H, W, C)`` of the model input.
        mode: a ``Quantization`` (``resolve_quantization``).

    Returns:
        A float32 array, or None when ``mode`` calibrates nothing (data
        given to such a mode is not used).

    Raises:
        ValueError: missing data, a wrong shape, or (for a quantizer recipe)
            fewer than ``MIN_CALIBRATION_IMAGES`` images.

    Example:

    >>> images = np.zeros((40, 8, 8, 3), "float32")
    >>> check_calibration_data(images, (8, 8, 3), resolve_quantization("static_int8")).shape
    (40, 8, 8, 3)
    >>> check_calibration_data(images[:10], (8, 8, 3), resolve_quantization("static_int8"))
    Traceback (most recent call last):
    ValueError: `representative_data` has 10 images; `quantization='static_int8'` needs at least 32 ...
    """
    if not mode.needs_calibration:
        return None
    shape = ", ".join(map(str, image_shape))
    label = mode.name if mode.name != CUSTOM_RECIPE else "a recipe with static activations"
    if representative_data is None:
        raise ValueError(
            f"`quantization={label!r}` needs `representative_data`: a numpy array "
            f"of typical model-input images of shape (N, {shape}) "
            "(100-500 images) to calibrate activation ranges; got None."
        )
    data = np.asarray(representative_data, dtype=np.float32)
    if data.ndim != 4 or list(data.shape[1:]) != list(image_shape) or not len(data):
        raise ValueError(
            f"`representative_data` must be a non-empty array of shape (N, {shape}); "
            f"got 'array of shape {data.shape}'."
        )
    if mode.recipe is not None and len(data) < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"`representative_data` has {len(data)} images; `quantization={label!r}` needs at least "
            f"{MIN_CALIBRATION_IMAGES} (each activation range is the min and max over these images, and with n "
            "of them a new image falls outside a range with probability 2/(n+1)); use 100-500 typical images."
        )
    return data
