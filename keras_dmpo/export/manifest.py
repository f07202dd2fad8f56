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

from keras_dmpo import atomic_io
from keras_dmpo.litert import CRITERIA
from keras_dmpo.litert import FORMAT_VERSION
from keras_dmpo.litert import MANIFEST_NAME
from keras_dmpo.version import __version__

FLOPS_CONVENTION = "multiply-add = 2 FLOPs"
# The manifest's name inside a staging directory until the export is
# complete (see staging_directory).
PENDING_MANIFEST_NAME = ".manifest.json.pending"


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


def lock_path(directory):
    """The lock file beside an export directory (held while exporting to it)."""
    parent, base = os.path.split(os.path.abspath(os.fspath(directory)))
    return os.path.join(parent, f".{base}.lock")


@contextlib.contextmanager
def staging_directory(directory, overwrite):
    """Yield a temporary sibling directory; on success, publish it as ``directory``.

    Files are written into ``.NAME.partial-XXXX``; ``write_manifest`` puts the
    manifest there under a pending name. Publishing renames the directory to
    ``.NAME.ready-XXXX``, gives the manifest its real name (the bundle is now
    complete) and swaps it with the target in one atomic step (Linux
    ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames). So at every
    moment the target is the old complete export or the new complete one,
    a directory holding ``manifest.json`` is always complete, and a
    ``.partial-`` directory never holds one. A failure removes the temporary
    directory and keeps the previous export.

    A second process exporting to the same directory at the same time gets
    ``FileExistsError`` at once (a lock file beside the target, held from the
    check of the target to the end of the publication; it is removed after).
    Leftovers of killed exports to the same target are removed under the
    lock.
    """
    directory = check_output_directory(directory, overwrite)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(directory)
    with atomic_io.exclusive_lock(lock_path(directory), blocking=False,
                                  what=f"exporting to {directory!r}"):
        check_output_directory(directory, overwrite)  # again, now that we hold the lock
        _remove_debris(parent, base)
        staging = tempfile.mkdtemp(prefix=f".{base}{atomic_io.PARTIAL_MARK}", dir=parent)
        # mkdtemp makes the directory private (0700); an export is meant to be read.
        os.chmod(staging, 0o755)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _publish(staging, directory)


DEBRIS_MARKS = (atomic_io.PARTIAL_MARK, ".ready-", ".old-")


def _remove_debris(parent, base):
    """Temporary directories of killed exports to the same target (only
    called with the target's lock held, so none of them is in use)."""
    prefixes = tuple(f".{base}{mark}" for mark in DEBRIS_MARKS)
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith(prefixes) and os.path.isdir(path) and not os.path.islink(path):
            _discard(path)


def _discard(path):
    """Remove an export directory, its manifest first (so that a kill during
    the removal cannot leave a directory that looks complete)."""
    atomic_io.remove_quietly(os.path.join(path, MANIFEST_NAME))
    shutil.rmtree(path, ignore_errors=True)


def _publish(staging, directory):
    parent, base = os.path.split(directory)
    token = os.path.basename(staging)[len(f".{base}{atomic_io.PARTIAL_MARK}"):]
    ready = os.path.join(parent, f".{base}.ready-{token}")
    try:
        for entry in os.listdir(staging):  # durable before anything is renamed
            atomic_io.fsync_file(os.path.join(staging, entry))
        os.rename(staging, ready)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        pending = os.path.join(ready, PENDING_MANIFEST_NAME)
        if not os.path.isfile(pending):
            raise RuntimeError(f"internal error: the export in {ready!r} has no manifest")
        os.replace(pending, os.path.join(ready, MANIFEST_NAME))  # complete from here on
        atomic_io.fsync_directory(ready)
        if not os.path.exists(directory):
            os.rename(ready, directory)
        elif atomic_io.exchange_paths(ready, directory):
            pass  # ``ready`` now holds the previous export
        else:
            # No atomic swap here: move the old export aside, then rename.
            # (Between the two renames the target is briefly absent.)
            old = os.path.join(parent, f".{base}.old-{token}")
            os.rename(directory, old)
            try:
                os.rename(ready, directory)
            except BaseException:
                os.rename(old, directory)
                raise
            ready = old
        atomic_io.fsync_directory(parent)
    except BaseException:
        _discard(ready)
        raise
    if os.path.exists(ready):
        _discard(ready)  # the previous export


def write_manifest(staging, manifest):
    """Write the manifest into ``staging`` under its pending name; publishing
    renames it to ``manifest.json`` once the directory is no longer a
    ``.partial-`` one."""
    path = os.path.join(staging, PENDING_MANIFEST_NAME)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    return path
