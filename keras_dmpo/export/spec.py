"""ExportSpec: what a stage-graph export needs to know besides the graphs.

One frozen, validated object (exits, the exit policy, FLOPs, image shape,
preprocessing, class names, versions) that the TFLite writer, the
ONNX writer and the manifest all read. ``EarlyExitModel.export_spec()``
builds it once from a tuned model. Numpy only: a bad argument fails in
milliseconds, before anything heavy is imported or converted.
"""

import dataclasses
import json
import math
import numbers

import numpy as np

from keras_dmpo.litert import FORMAT_VERSION
from keras_dmpo.policy import ExitPolicy
from keras_dmpo.version import __version__

FLOPS_CONVENTION = "multiply-add = 2 FLOPs"
PREPROCESSING_KEYS = ("scale", "offset", "input_range", "resize", "channels", "color_order")


def _fail(argument, value, expectation):
    raise ValueError(f"`{argument}` must be {expectation}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """The metadata of an early-exit export, validated once.

    Args:
        exits: K increasing 1-based block numbers, one per stage.
        policy: the ``keras_dmpo.policy.ExitPolicy`` (or its dict) the
            runtime applies, for K exits.
        flops_per_exit: K positive, non-decreasing cumulative FLOPs per image.
        full_model_flops: FLOPs of the backbone with only the last head (100%).
        image_shape: ``(H, W, C)`` of the model input.
        preprocessing: dict, ``x_model = x_raw * scale + offset`` with
            ``scale``/``offset`` numbers or per-channel lists, ``input_range``
            of the raw pixels (``[0, 255]``: uint8 input), ``resize`` (must be
            ``[H, W]``), ``channels``, ``color_order``. Missing keys get
            identity defaults (docs/export.md).
        class_names: optional list of C names.
        extra: optional JSON-serialisable dict, stored as ``manifest["extra"]``.

    Example:

    >>> spec = ExportSpec(exits=[2, 4], policy=ExitPolicy("confidence", [0.9, 0.0]),
    ...                   flops_per_exit=[4e6, 8e6],
    ...                   full_model_flops=7.9e6, image_shape=(32, 32, 3),
    ...                   preprocessing={"scale": 1 / 255, "input_range": [0, 255]})
    >>> spec.num_stages, spec.preprocessing["scale"]
    (2, 0.00392156862745098)
    """

    exits: tuple
    policy: ExitPolicy
    flops_per_exit: tuple
    full_model_flops: float
    image_shape: tuple
    preprocessing: dict = None
    class_names: tuple = None
    extra: dict = None
    keras_dmpo_version: str = __version__
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        exits = self._exits()
        k = len(exits)
        values = {
            "exits": exits,
            "policy": self._policy(k),
            "flops_per_exit": self._flops(k),
            "full_model_flops": self._full_model_flops(),
            "image_shape": self._image_shape(),
        }
        values["preprocessing"] = normalize_preprocessing(self.preprocessing, list(values["image_shape"]))
        values["class_names"] = self._class_names()
        values["extra"] = self._extra()
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # -- checks (each names its argument) ----------------------------------
    def _exits(self):
        try:
            exits = tuple(int(e) for e in self.exits)
        except (TypeError, ValueError):
            _fail("exits", self.exits, "increasing 1-based block numbers")
        if not exits or list(exits) != sorted(set(exits)) or exits[0] < 1:
            _fail("exits", self.exits, "increasing 1-based block numbers (one per stage)")
        return exits

    def _policy(self, k):
        policy = self.policy
        if isinstance(policy, dict):
            policy = ExitPolicy.from_dict(policy)
        if not isinstance(policy, ExitPolicy):
            _fail("policy", policy, "an ExitPolicy or its dict")
        if policy.num_exits != k:
            _fail("policy", policy.to_dict(), f"a policy for the {k} exits {list(self.exits)}")
        return policy

    def _flops(self, k):
        try:
            flops = tuple(float(f) for f in self.flops_per_exit)
        except (TypeError, ValueError):
            _fail("flops_per_exit", self.flops_per_exit, f"{k} cumulative FLOPs")
        if (
            len(flops) != k
            or any(not math.isfinite(f) or f <= 0 for f in flops)
            or any(b < a for a, b in zip(flops, flops[1:]))
        ):
            _fail(
                "flops_per_exit",
                list(flops),
                f"{k} positive, non-decreasing cumulative FLOPs (one per stage)",
            )
        return flops

    def _full_model_flops(self):
        value = self.full_model_flops
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or value <= 0
        ):
            _fail("full_model_flops", value, "a positive number")
        return float(value)

    def _image_shape(self):
        try:
            shape = tuple(int(d) for d in self.image_shape)
        except (TypeError, ValueError):
            _fail("image_shape", self.image_shape, "(height, width, channels)")
        if len(shape) != 3 or min(shape) < 1:
            _fail("image_shape", self.image_shape, "(height, width, channels) of positive ints")
        return shape

    def _class_names(self):
        if self.class_names is None:
            return None
        if isinstance(self.class_names, (str, bytes)):
            _fail("class_names", self.class_names, "a list of strings or None")
        return tuple(str(c) for c in self.class_names)

    def _extra(self):
        if self.extra is None:
            return None
        if not isinstance(self.extra, dict):
            _fail("extra", self.extra, "a JSON-serialisable dict or None")
        try:
            json.dumps(self.extra)
        except (TypeError, ValueError) as error:
            raise ValueError(f"`extra` must be JSON-serialisable: {error}") from error
        return dict(self.extra)

    # -- what the writers read -------------------------------------------------
    @property
    def num_stages(self):
        return len(self.exits)

    def check_num_stages(self, count, argument="stage_models"):
        if count != self.num_stages:
            raise ValueError(
                f"`{argument}` has {count} models; the export spec has {self.num_stages} exits {list(self.exits)}."
            )

    def stage_entry(self, index, file_entry):
        """Manifest entry of 0-based stage ``index``: the file's keys plus its exit."""
        flops = self.flops_per_exit
        return {
            **file_entry,
            "index": index + 1,
            "exit_block": self.exits[index],
            "flops": flops[index],
            "stage_flops": flops[index] - (flops[index - 1] if index else 0.0),
            "fraction_of_full_model": flops[index] / self.full_model_flops,
        }

    def manifest(self, fmt, *, num_classes, quantization, created_by, stages, monolithic=None):
        """The manifest dict (schema in docs/export.md)."""
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise ValueError(
                f"`class_names` has {len(self.class_names)} names but the model has {num_classes} classes."
            )
        manifest = {
            "format": fmt,
            "format_version": self.format_version,
            "keras_dmpo_version": self.keras_dmpo_version,
            "created_by": created_by,
            "image_shape": list(self.image_shape),
            "preprocessing": self.preprocessing,
            "class_names": None if self.class_names is None else list(self.class_names),
            "num_classes": int(num_classes),
            "quantization": quantization,
            "exits": list(self.exits),
            "policy": self.policy.to_dict(),
            "full_model_flops": self.full_model_flops,
            "flops_convention": FLOPS_CONVENTION,
            "stages": list(stages),
            "monolithic": monolithic,
        }
        if self.extra is not None:
            manifest["extra"] = self.extra
        return manifest


def normalize_preprocessing(preprocessing, image_shape):
    """Fill in and check the preprocessing dict (semantics in docs/export.md).

    ``x_model = x_raw * scale + offset``, where ``scale`` and ``offset`` are
    numbers or per-channel lists; ``input_range`` is the raw pixel range the
    app feeds (``[0, 255]`` means uint8 pixels are accepted); ``resize`` is the
    ``[height, width]`` the app resizes to (always the model's image size);
    ``channels`` the channel count (RGB order for 3).
    """
    if preprocessing is None:
        preprocessing = {}
    if not isinstance(preprocessing, dict):
        _fail("preprocessing", preprocessing, "a dict (scale, offset, input_range, ...)")
    unknown = set(preprocessing) - set(PREPROCESSING_KEYS) - {"formula"}
    if unknown:
        _fail("preprocessing", preprocessing, f"a dict with keys among {sorted(PREPROCESSING_KEYS)}")
    channels = image_shape[-1]
    out = {}
    for key, default in (("scale", 1.0), ("offset", 0.0)):
        value = preprocessing.get(key, default)
        array = np.asarray(value, dtype=np.float64)
        if array.ndim > 1 or (array.ndim == 1 and array.shape[0] != channels):
            _fail(f"preprocessing['{key}']", value, f"a number or {channels} numbers")
        if not np.all(np.isfinite(array)):
            _fail(f"preprocessing['{key}']", value, "finite")
        out[key] = array.tolist()
    input_range = [float(v) for v in preprocessing.get("input_range", [0.0, 1.0])]
    if len(input_range) != 2 or not input_range[0] < input_range[1]:
        _fail("preprocessing['input_range']", input_range, "[low, high] with low < high")
    out["input_range"] = input_range
    resize = [int(v) for v in preprocessing.get("resize", image_shape[:2])]
    if resize != list(image_shape[:2]):
        _fail("preprocessing['resize']", resize, f"the model's image size {list(image_shape[:2])}")
    out["resize"] = resize
    out["channels"] = int(preprocessing.get("channels", channels))
    if out["channels"] != channels:
        _fail("preprocessing['channels']", out["channels"], f"{channels} (image_shape)")
    out["color_order"] = preprocessing.get("color_order", "RGB" if channels == 3 else None)
    out["formula"] = "x_model = x_raw * scale + offset"
    return out
