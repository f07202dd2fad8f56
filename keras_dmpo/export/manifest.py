"""What TFLite and ONNX stage-graph exports share: argument checks, the
manifest's common part, and the atomic output directory.

Kept free of Keras and TensorFlow imports so the checks run before anything
heavy is loaded (a bad argument should fail in milliseconds, not after a
conversion).
"""

import contextlib
import json
import math
import numbers
import os
import shutil
import tempfile

import numpy as np

from keras_dmpo.litert import CRITERIA
from keras_dmpo.litert import FORMAT_VERSION
from keras_dmpo.litert import MANIFEST_NAME
from keras_dmpo.version import __version__

FLOPS_CONVENTION = "multiply-add = 2 FLOPs"


def _fail(argument, value, expectation):
    raise ValueError(f"`{argument}` must be {expectation}; got {value!r}.")


def check_stage_models(stage_models):
    if isinstance(stage_models, (str, bytes)) or not hasattr(stage_models, "__len__"):
        _fail("stage_models", stage_models, "a non-empty list of Keras models")
    stage_models = list(stage_models)
    if not stage_models:
        _fail("stage_models", stage_models, "a non-empty list of Keras models")
    return stage_models


def check_common_arguments(
    num_stages,
    *,
    exits,
    thresholds,
    criterion,
    flops_per_exit,
    full_model_flops,
    image_shape,
    preprocessing,
    class_names,
    extra_metadata,
):
    """Validate and normalise the metadata arguments of a stage-graph export.

    Returns:
        dict with normalised ``exits``, ``thresholds``, ``criterion``,
        ``flops_per_exit``, ``full_model_flops``, ``image_shape``,
        ``preprocessing``, ``class_names``, ``extra``.
    """
    k = num_stages
    try:
        exits = [int(e) for e in exits]
    except (TypeError, ValueError):
        _fail("exits", exits, f"{k} increasing 1-based block numbers")
    if len(exits) != k or exits != sorted(set(exits)) or exits[0] < 1:
        _fail("exits", exits, f"{k} increasing 1-based block numbers (one per stage)")

    try:
        thresholds = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        _fail("thresholds", thresholds, f"{k} numbers in [0, 1]")
    if len(thresholds) != k:
        _fail("thresholds", thresholds, f"{k} numbers in [0, 1] (one per stage)")
    for t in thresholds:
        if math.isnan(t) or not 0.0 <= t <= 1.0:
            _fail("thresholds", thresholds, "numbers in [0, 1] (no NaN)")

    if criterion not in CRITERIA:
        _fail("criterion", criterion, f"one of {CRITERIA}")

    try:
        flops_per_exit = [float(f) for f in flops_per_exit]
    except (TypeError, ValueError):
        _fail("flops_per_exit", flops_per_exit, f"{k} cumulative FLOPs")
    if (
        len(flops_per_exit) != k
        or any(not math.isfinite(f) or f <= 0 for f in flops_per_exit)
        or any(b < a for a, b in zip(flops_per_exit, flops_per_exit[1:]))
    ):
        _fail(
            "flops_per_exit",
            flops_per_exit,
            f"{k} positive, non-decreasing cumulative FLOPs (one per stage)",
        )
    if (
        not isinstance(full_model_flops, numbers.Real)
        or not math.isfinite(full_model_flops)
        or full_model_flops <= 0
    ):
        _fail("full_model_flops", full_model_flops, "a positive number")

    try:
        image_shape = [int(d) for d in image_shape]
    except (TypeError, ValueError):
        _fail("image_shape", image_shape, "(height, width, channels)")
    if len(image_shape) != 3 or min(image_shape) < 1:
        _fail("image_shape", image_shape, "(height, width, channels) of positive ints")

    preprocessing = normalize_preprocessing(preprocessing, image_shape)

    if class_names is not None:
        if isinstance(class_names, (str, bytes)):
            _fail("class_names", class_names, "a list of strings or None")
        class_names = [str(c) for c in class_names]

    if extra_metadata is not None:
        if not isinstance(extra_metadata, dict):
            _fail("extra_metadata", extra_metadata, "a JSON-serialisable dict or None")
        try:
            json.dumps(extra_metadata)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`extra_metadata` must be JSON-serialisable: {error}"
            ) from error
    return dict(
        exits=exits,
        thresholds=thresholds,
        criterion=criterion,
        flops_per_exit=flops_per_exit,
        full_model_flops=float(full_model_flops),
        image_shape=image_shape,
        preprocessing=preprocessing,
        class_names=class_names,
        extra=extra_metadata,
    )


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
    known = {"scale", "offset", "input_range", "resize", "channels", "color_order"}
    unknown = set(preprocessing) - known
    if unknown:
        _fail("preprocessing", preprocessing, f"a dict with keys among {sorted(known)}")
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
    if resize != image_shape[:2]:
        _fail("preprocessing['resize']", resize, f"the model's image size {image_shape[:2]}")
    out["resize"] = resize
    out["channels"] = int(preprocessing.get("channels", channels))
    if out["channels"] != channels:
        _fail("preprocessing['channels']", out["channels"], f"{channels} (image_shape)")
    out["color_order"] = preprocessing.get("color_order", "RGB" if channels == 3 else None)
    out["formula"] = "x_model = x_raw * scale + offset"
    return out


def check_int8_data(representative_data, image_shape, quantization):
    """For int8, check the calibration images; else return None."""
    if quantization != "int8":
        return None
    if representative_data is None:
        raise ValueError(
            "`quantization='int8'` needs `representative_data`: a numpy array "
            f"of typical model-input images of shape (N, {', '.join(map(str, image_shape))}) "
            "(100-500 images) to calibrate activation ranges; got None."
        )
    data = np.asarray(representative_data, dtype=np.float32)
    if data.ndim != 4 or list(data.shape[1:]) != list(image_shape) or not len(data):
        _fail(
            "representative_data",
            f"array of shape {data.shape}",
            f"a non-empty array of shape (N, {', '.join(map(str, image_shape))})",
        )
    return data


def base_manifest(fmt, checked, *, quantization, num_classes, created_by):
    """The top-level keys shared by TFLite and ONNX manifests."""
    class_names = checked["class_names"]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names but the model has "
            f"{num_classes} classes."
        )
    manifest = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "keras_dmpo_version": __version__,
        "created_by": created_by,
        "image_shape": checked["image_shape"],
        "preprocessing": checked["preprocessing"],
        "class_names": class_names,
        "num_classes": int(num_classes),
        "criterion": checked["criterion"],
        "quantization": quantization,
        "exits": checked["exits"],
        "thresholds": checked["thresholds"],
        "full_model_flops": checked["full_model_flops"],
        "flops_convention": FLOPS_CONVENTION,
        "stages": [],
        "monolithic": None,
    }
    if checked["extra"] is not None:
        manifest["extra"] = checked["extra"]
    return manifest


def stage_entry(index, checked, file_entry):
    """Manifest entry of 0-based stage ``index`` (file keys + exit metadata)."""
    flops = checked["flops_per_exit"]
    entry = dict(file_entry)
    entry.update(
        index=index + 1,
        exit_block=checked["exits"][index],
        threshold=checked["thresholds"][index],
        flops=flops[index],
        stage_flops=flops[index] - (flops[index - 1] if index else 0.0),
        fraction_of_full_model=flops[index] / checked["full_model_flops"],
    )
    return entry


def check_output_directory(directory, overwrite):
    """Refuse an existing non-empty directory unless ``overwrite``."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise FileExistsError(f"Export path {directory!r} exists and is not a directory.")
        if os.listdir(directory) and not overwrite:
            raise FileExistsError(
                f"Export directory {directory!r} exists and is not empty; pass "
                "overwrite=True to replace it."
            )
    return directory


@contextlib.contextmanager
def staging_directory(directory, overwrite):
    """Yield a temporary sibling directory; on success, rename it to ``directory``.

    A failure removes the temporary directory, so no half-written export is
    ever left where a reader would look (and an existing export is kept).
    The manifest is written last inside it, too.
    """
    directory = check_output_directory(directory, overwrite)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.partial-", dir=parent)
    # mkdtemp makes the directory private (0700); an export is meant to be read.
    os.chmod(staging, 0o755)
    try:
        yield staging
        _publish(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging, directory):
    old = None
    if os.path.exists(directory):
        # Move the old directory aside first: two renames are the closest to
        # an atomic swap that POSIX offers for directories.
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-",
                               dir=os.path.dirname(directory))
        os.rmdir(old)
        os.rename(directory, old)
    try:
        os.rename(staging, directory)
    except BaseException:
        if old is not None:
            os.rename(old, directory)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_manifest(staging, manifest):
    path = os.path.join(staging, MANIFEST_NAME)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    return path
