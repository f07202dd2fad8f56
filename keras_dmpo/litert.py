"""Staged early-exit runtime for exported TFLite stage graphs (LiteRT + numpy).

This module is what a phone-side or server-side user needs to run an exported
model: it imports only numpy and the standard library at import, and
``ai_edge_litert`` when the first stage is loaded. It never imports Keras,
keras-hub or TensorFlow (``import keras_dmpo.litert`` is tested to keep
``sys.modules`` free of them).

The directory is the output of ``EarlyExitModel.export_tflite`` (or
``keras_dmpo.export.tflite.export_stage_graphs``): ``manifest.json`` plus
``stage_1.tflite .. stage_K.tflite`` and optionally ``monolithic.tflite``.
See docs/export.md for the manifest schema and docs/reliability.md for what
the runtime checks before it opens any stage file.
"""

import json
import math
import os
import stat
import time
import warnings

import numpy as np

# stdlib only: keeps this runtime free of Keras and TensorFlow
from keras_dmpo import exit_rule
from keras_dmpo.atomic_io import sha256_file as sha256_of_file

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
QUANTIZATION_MODES = (None, "dynamic", "float16", "int8")
# A manifest is a few KB; anything this large is not one (and would be slow
# to parse).
MAX_MANIFEST_BYTES = 16 << 20
PREPROCESSING_KEYS = ("scale", "offset", "input_range", "resize", "channels", "color_order", "formula")
TENSOR_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
# Pixels further than this fraction of the input range outside it make
# StagedRuntime warn (once): probably already-normalised or 0-255 images fed
# to a model that expects another range.
INPUT_RANGE_TOLERANCE = 0.5
_SHOWN_INDICES = 5


# -- non-finite input ----------------------------------------------------------


def non_finite_samples(images, chunk_elements=1 << 22):
    """0-based indices (first axis) of the samples holding NaN or inf.

    Integer and boolean arrays are always finite. Works in chunks, so a large
    training array needs no full-size boolean copy.
    """
    array = np.asarray(images)
    if not np.issubdtype(array.dtype, np.inexact):
        return np.zeros(0, np.int64)
    if array.ndim == 0:
        return np.zeros(0 if np.isfinite(array) else 1, np.int64)
    per_sample = max(1, int(np.prod(array.shape[1:], dtype=np.int64)))
    rows = max(1, chunk_elements // per_sample)
    bad = []
    for start in range(0, array.shape[0], rows):
        finite = np.isfinite(array[start : start + rows]).reshape(-1, per_sample).all(axis=1)
        if not finite.all():
            bad.append(np.flatnonzero(~finite) + start)
    return np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)


def check_finite(images, argument="images", hint=""):
    """Raise a ``ValueError`` naming the first samples with NaN or inf values.

    Args:
        images: array whose first axis is the sample axis.
        argument: the argument's name for the message.
        hint: a sentence appended to the message (what the caller can do).
    """
    bad = non_finite_samples(images)
    if bad.size:
        total = np.shape(images)[0] if np.ndim(images) else 1
        shown = bad[:_SHOWN_INDICES].tolist()
        more = f" and {bad.size - len(shown)} more" if bad.size > len(shown) else ""
        raise ValueError(
            f"`{argument}` has NaN or inf pixel values in {bad.size} of {total} "
            f"samples (indices {shown}{more}); expected finite pixels. "
            + (hint or "Clean or drop those samples.")
        )


# -- manifest schema -------------------------------------------------------------


def _describe(value):
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_hex_digest(value):
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


class _Checker:
    """Raises ``ValueError("<source>: manifest[...] must be ...; got ...")``."""

    def __init__(self, source):
        self.source = source

    def fail(self, where, value, expected):
        raise ValueError(f"{self.source}: {where} must be {expected}; got {_describe(value)}.")

    def require(self, mapping, key, where, expected):
        if key not in mapping:
            raise ValueError(f"{self.source}: {where} lacks the required key {key!r} ({expected}).")
        return mapping[key]

    def int_at_least(self, value, where, low):
        if not _is_int(value) or value < low:
            self.fail(where, value, f"an integer >= {low}")
        return value

    def number(self, value, where, low=None, high=None, expected=None):
        ok = _is_number(value) and (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            if expected is None:
                expected = "a finite number" + (
                    f" in [{low}, {high}]"
                    if low is not None and high is not None
                    else f" >= {low}"
                    if low is not None
                    else ""
                )
            self.fail(where, value, expected)
        return float(value)

    def string(self, value, where, optional=False):
        if optional and value is None:
            return value
        if not isinstance(value, str):
            self.fail(where, value, "a string" + (" or null" if optional else ""))
        return value

    def list_of(self, value, where, length=None, expected="a list"):
        if not isinstance(value, list) or (length is not None and len(value) != length):
            self.fail(where, value, expected)
        return value


def _check_file_name(check, value, where):
    """A plain file name inside the bundle directory: no path at all."""
    expected = "a plain file name inside the export directory (no '..', no path separator, not absolute)"
    if not isinstance(value, str) or not value or len(value) > 255:
        check.fail(where, value, expected)
    separators = {"/", "\\", "\x00", os.sep} | ({os.altsep} if os.altsep else set())
    if (
        value in (".", "..")
        or any(s in value for s in separators)
        or os.path.isabs(value)
        or value == MANIFEST_NAME
    ):
        check.fail(where, value, expected + f" and not {MANIFEST_NAME!r}")
    return value


def _check_tensor_specs(check, specs, where, count=None):
    expected = (
        f"a list of {count} tensor spec(s)" if count else "a non-empty list of tensor specs"
    ) + ' {"name": str, "shape": [ints, -1 for the batch], "dtype": str}'
    if not isinstance(specs, list) or not specs or (count is not None and len(specs) != count):
        check.fail(where, specs, expected)
    names = set()
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        if not isinstance(spec, dict):
            check.fail(at, spec, 'a dict {"name", "shape", "dtype"}')
        name = check.require(spec, "name", at, "the tensor name")
        if not isinstance(name, str) or not name:
            check.fail(f"{at}['name']", name, "a non-empty string")
        if name in names:
            check.fail(f"{at}['name']", name, "unique within the list")
        names.add(name)
        shape = check.require(spec, "shape", at, "a list of dimensions")
        if (
            not isinstance(shape, list)
            or not shape
            or any(not _is_int(d) or (d < 1 and d != -1) for d in shape)
        ):
            check.fail(
                f"{at}['shape']", shape, "a non-empty list of positive ints (-1 for a dynamic dimension)"
            )
        dtype = check.require(spec, "dtype", at, "the element type")
        if dtype not in TENSOR_DTYPES:
            check.fail(f"{at}['dtype']", dtype, f"one of {list(TENSOR_DTYPES)}")
    return {spec["name"]: spec for spec in specs}


def _check_graph_entry(check, entry, where, image_shape, num_classes, first, last):
    """File keys and signature of a stage (or the monolithic) entry."""
    if not isinstance(entry, dict):
        check.fail(where, entry, "a dict (a graph entry)")
    _check_file_name(check, check.require(entry, "file", where, "the graph's file name"), f"{where}['file']")
    digest = check.require(entry, "sha256", where, "the file's hex sha256")
    if not _is_hex_digest(digest):
        check.fail(f"{where}['sha256']", digest, "a 64-character hex sha256 string")
    check.int_at_least(
        check.require(entry, "size_bytes", where, "the file size"), f"{where}['size_bytes']", 0
    )
    if "signature_key" in entry:
        check.string(entry["signature_key"], f"{where}['signature_key']", optional=True)
    inputs = _check_tensor_specs(
        check, check.require(entry, "inputs", where, "the input specs"), f"{where}['inputs']", count=1
    )
    (spec,) = inputs.values()
    if spec["dtype"] != "float32":
        check.fail(f"{where}['inputs'][0]['dtype']", spec["dtype"], "'float32' (the runtime feeds float32)")
    if first and spec["shape"][1:] != list(image_shape):
        check.fail(
            f"{where}['inputs'][0]['shape']",
            spec["shape"],
            f"[-1, {', '.join(map(str, image_shape))}] (batch + image_shape)",
        )
    if not first and len(spec["shape"]) != 3:
        check.fail(f"{where}['inputs'][0]['shape']", spec["shape"], "[batch, tokens, width]")
    outputs = _check_tensor_specs(
        check, check.require(entry, "outputs", where, "the output specs"), f"{where}['outputs']"
    )
    wanted = {"probabilities"} if last else {"probabilities", "tokens"}
    if set(outputs) != wanted:
        check.fail(f"{where}['outputs']", sorted(outputs), f"outputs named {sorted(wanted)}")
    probabilities = outputs["probabilities"]["shape"]
    if len(probabilities) != 2 or probabilities[-1] != num_classes:
        check.fail(
            f"{where}['outputs'] 'probabilities' shape",
            probabilities,
            f"[batch, {num_classes}] (num_classes)",
        )
    if not last and len(outputs["tokens"]["shape"]) != 3:
        check.fail(f"{where}['outputs'] 'tokens' shape", outputs["tokens"]["shape"], "[batch, tokens, width]")
    return inputs, outputs


def _check_preprocessing(check, value, image_shape):
    where = "manifest['preprocessing']"
    if not isinstance(value, dict):
        check.fail(where, value, "a dict (scale, offset, input_range, ...)")
    unknown = sorted(set(value) - set(PREPROCESSING_KEYS))
    if unknown:
        # An unknown step (say "mean") would be silently skipped: refuse it.
        check.fail(
            f"{where} key {unknown[0]!r}",
            value[unknown[0]],
            f"absent: known keys are {list(PREPROCESSING_KEYS)}",
        )
    channels = image_shape[-1]
    for key in ("scale", "offset"):
        item = check.require(value, key, where, "a number or one number per channel")
        items = item if isinstance(item, list) else [item]
        if (isinstance(item, list) and len(item) not in (1, channels)) or not all(
            _is_number(v) for v in items
        ):
            check.fail(f"{where}['{key}']", item, f"a finite number or {channels} finite numbers")
        if key == "scale" and any(v == 0 for v in items):
            check.fail(f"{where}['scale']", item, "non-zero")
    input_range = check.require(value, "input_range", where, "[low, high] of the raw pixels")
    if (
        not isinstance(input_range, list)
        or len(input_range) != 2
        or not all(_is_number(v) for v in input_range)
        or not input_range[0] < input_range[1]
    ):
        check.fail(f"{where}['input_range']", input_range, "[low, high] finite numbers with low < high")
    if "resize" in value and value["resize"] != list(image_shape[:2]):
        check.fail(f"{where}['resize']", value["resize"], f"{list(image_shape[:2])} (the model's image size)")
    if "channels" in value and (not _is_int(value["channels"]) or value["channels"] != channels):
        check.fail(f"{where}['channels']", value["channels"], f"{channels} (image_shape)")
    for key in ("color_order", "formula"):
        if key in value:
            check.string(value[key], f"{where}['{key}']", optional=True)


def validate_manifest(manifest, source="manifest.json"):
    """Check a TFLite export manifest against the format-1 schema.

    Pure Python: no file is opened. File names must be plain names inside
    the export directory (``StagedRuntime`` also refuses symlinks that leave
    it). Raises ``ValueError`` naming the key, the value and what is
    expected; returns ``manifest`` unchanged.
    """
    check = _Checker(source)
    if not isinstance(manifest, dict):
        check.fail("the manifest", manifest, "a JSON object")
    version = check.require(manifest, "format_version", "the manifest", "the schema version")
    if not _is_int(version) or version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f"{source} has format_version={version!r}; this keras_dmpo runtime "
            f"supports format_version {list(SUPPORTED_FORMAT_VERSIONS)}. Re-export "
            "the model or upgrade keras_dmpo."
        )
    fmt = check.require(manifest, "format", "the manifest", '"tflite"')
    if fmt != "tflite":
        if fmt == "onnx":
            raise ValueError(
                f"{source} describes an 'onnx' export; StagedRuntime runs TFLite "
                "exports only (use onnxruntime for ONNX)."
            )
        check.fail("manifest['format']", fmt, '"tflite"')
    check.string(
        check.require(manifest, "keras_dmpo_version", "the manifest", "a version string"),
        "manifest['keras_dmpo_version']",
    )
    for key in ("created_by", "flops_convention"):
        if key in manifest:
            check.string(manifest[key], f"manifest['{key}']", optional=True)

    image_shape = check.require(manifest, "image_shape", "the manifest", "[height, width, channels]")
    if (
        not isinstance(image_shape, list)
        or len(image_shape) != 3
        or not all(_is_int(d) and d >= 1 for d in image_shape)
    ):
        check.fail("manifest['image_shape']", image_shape, "[height, width, channels] of 3 positive ints")
    num_classes = check.int_at_least(
        check.require(manifest, "num_classes", "the manifest", "the class count"),
        "manifest['num_classes']",
        2,
    )
    class_names = manifest.get("class_names")
    if class_names is not None and (
        not isinstance(class_names, list)
        or len(class_names) != num_classes
        or not all(isinstance(c, str) for c in class_names)
    ):
        check.fail(
            "manifest['class_names']", class_names, f"null or a list of {num_classes} strings (num_classes)"
        )
    criterion = check.require(manifest, "criterion", "the manifest", f"one of {exit_rule.CRITERIA}")
    if criterion not in exit_rule.CRITERIA:
        check.fail("manifest['criterion']", criterion, f"one of {list(exit_rule.CRITERIA)}")
    if manifest.get("quantization") not in QUANTIZATION_MODES:
        check.fail(
            "manifest['quantization']", manifest.get("quantization"), f"one of {list(QUANTIZATION_MODES)}"
        )
    _check_preprocessing(
        check, check.require(manifest, "preprocessing", "the manifest", "a dict"), image_shape
    )

    exits = check.require(manifest, "exits", "the manifest", "the 1-based exit blocks")
    if (
        not isinstance(exits, list)
        or not exits
        or not all(_is_int(e) and e >= 1 for e in exits)
        or any(b <= a for a, b in zip(exits, exits[1:]))
    ):
        check.fail("manifest['exits']", exits, "a non-empty list of increasing positive ints")
    k = len(exits)
    thresholds = check.list_of(
        check.require(manifest, "thresholds", "the manifest", f"{k} numbers in [0, 1]"),
        "manifest['thresholds']",
        k,
        f"a list of {k} numbers in [0, 1] (one per exit)",
    )
    for i, t in enumerate(thresholds):
        check.number(t, f"manifest['thresholds'][{i}]", 0.0, 1.0)
    full = check.require(manifest, "full_model_flops", "the manifest", "a positive number")
    if not _is_number(full) or full <= 0:
        check.fail("manifest['full_model_flops']", full, "a positive finite number")
    if "extra" in manifest and not isinstance(manifest["extra"], dict):
        check.fail("manifest['extra']", manifest["extra"], "a dict")

    stages = check.require(manifest, "stages", "the manifest", "the stage entries")
    check.list_of(
        stages, "manifest['stages']", k, f"a list of {k} stage entries (one per exit in manifest['exits'])"
    )
    files = []
    previous_flops = 0.0
    previous_tokens = None
    for i, entry in enumerate(stages):
        where = f"manifest['stages'][{i}]"
        inputs, outputs = _check_graph_entry(
            check, entry, where, image_shape, num_classes, first=i == 0, last=i == k - 1
        )
        if entry.get("index") != i + 1 or not _is_int(entry.get("index")):
            check.fail(f"{where}['index']", entry.get("index"), f"{i + 1} (1-based stage number)")
        if entry.get("exit_block") != exits[i] or not _is_int(entry.get("exit_block")):
            check.fail(
                f"{where}['exit_block']", entry.get("exit_block"), f"{exits[i]} (manifest['exits'][{i}])"
            )
        threshold = check.number(
            check.require(entry, "threshold", where, "a number in [0, 1]"), f"{where}['threshold']", 0.0, 1.0
        )
        if threshold != thresholds[i]:
            check.fail(
                f"{where}['threshold']",
                entry["threshold"],
                f"{thresholds[i]!r}, the same as manifest['thresholds'][{i}]",
            )
        flops = check.number(
            check.require(entry, "flops", where, "cumulative FLOPs"), f"{where}['flops']", 0.0
        )
        if flops < previous_flops:
            check.fail(
                f"{where}['flops']",
                entry["flops"],
                f">= the previous stage's {previous_flops!r} (cumulative FLOPs never decrease)",
            )
        previous_flops = flops
        for key in ("stage_flops", "fraction_of_full_model"):
            if key in entry:
                check.number(entry[key], f"{where}['{key}']", 0.0)
        (spec,) = inputs.values()
        if previous_tokens is not None and spec["shape"][1:] != previous_tokens[1:]:
            check.fail(
                f"{where}['inputs'][0]['shape']",
                spec["shape"],
                f"the previous stage's tokens shape {previous_tokens}",
            )
        previous_tokens = outputs["tokens"]["shape"] if "tokens" in outputs else None
        files.append((f"{where}['file']", entry["file"]))
    monolithic = manifest.get("monolithic")
    if monolithic is not None:
        _check_graph_entry(
            check, monolithic, "manifest['monolithic']", image_shape, num_classes, first=True, last=True
        )
        if "flops" in monolithic:
            check.number(monolithic["flops"], "manifest['monolithic']['flops']", 0.0)
        files.append(("manifest['monolithic']['file']", monolithic["file"]))
    seen = {}
    for where, name in files:
        if name in seen:
            check.fail(where, name, f"a file of its own (also named by {seen[name]})")
        seen[name] = where
    return manifest


def _read_manifest(directory):
    """Read and validate ``directory/manifest.json`` (no stage file is opened)."""
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Export directory {directory!r} does not exist (expected the output "
            "of EarlyExitModel.export_tflite)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {MANIFEST_NAME} in {directory!r}: not a keras_dmpo export, or an export that did not finish."
        )
    size = os.path.getsize(path)
    if size > MAX_MANIFEST_BYTES:
        raise ValueError(
            f"{path} has {size} bytes; a manifest has a few KB (at most "
            f"{MAX_MANIFEST_BYTES} bytes accepted): not a keras_dmpo manifest."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        # ValueError covers JSONDecodeError and over-long integer literals;
        # RecursionError a maliciously deep nesting.
        raise ValueError(f"{path} is not valid JSON (corrupt manifest): {error}") from None
    return validate_manifest(manifest, source=path)


def _resolve_bundle_file(directory, name, where):
    """The real path of ``name``, refused unless it is a regular file inside
    ``directory`` (a symlink may point elsewhere inside it, not outside)."""
    path = os.path.join(directory, name)
    if not os.path.lexists(path):
        raise FileNotFoundError(
            f"Stage file {name!r} listed in the manifest ({where}) is missing from {directory!r}."
        )
    real_directory = os.path.realpath(directory)
    real = os.path.realpath(path)
    if os.path.commonpath([real_directory, real]) != real_directory:
        raise ValueError(
            f"{where} = {name!r} in {directory!r} is a symlink that resolves to {real!r}, "
            "outside the export directory; expected a file inside it."
        )
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Stage file {name!r} listed in the manifest ({where}) is a dangling symlink in {directory!r}."
        ) from None
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"{where} = {name!r} in {directory!r} is not a regular file; expected a .tflite file."
        )
    return real


class _Stage:
    """One LiteRT interpreter, loaded on first use, resized only on change.

    Android apps call ``resizeInput`` + ``allocateTensors`` only when the batch
    size changes; the Python signature runner re-allocates on every call,
    which would dominate a 0.3 ms batch-1 stage. So inputs are set through the
    interpreter with the signature's tensor indices.
    """

    def __init__(self, path, entry, num_threads):
        self.path = path
        self.entry = entry
        self.num_threads = num_threads
        self._interpreter = None

    @property
    def loaded(self):
        return self._interpreter is not None

    def _load(self):
        from ai_edge_litert.interpreter import Interpreter

        key = self.entry.get("signature_key")
        try:
            interpreter = Interpreter(model_path=self.path, num_threads=self.num_threads)
            interpreter.allocate_tensors()
            # Only the tensor indices are kept: a live SignatureRunner holds
            # references that make later allocate_tensors() calls refuse to run.
            runner = interpreter.get_signature_runner(key)
            inputs = runner.get_input_details()
            outputs = runner.get_output_details()
        except (ValueError, RuntimeError, KeyError) as error:
            raise ValueError(
                f"{self.path} does not load as the TFLite graph the manifest describes "
                f"(signature_key {key!r}): {error}"
            ) from None
        del runner
        for kind, details in (("inputs", inputs), ("outputs", outputs)):
            expected = {t["name"]: t for t in self.entry[kind]}
            if set(details) != set(expected):
                raise ValueError(
                    f"{self.path} has signature {kind} {sorted(details)}; the manifest "
                    f"says {sorted(expected)}."
                )
            for name, detail in details.items():
                got = ([int(d) for d in detail["shape_signature"]], np.dtype(detail["dtype"]).name)
                want = (list(expected[name]["shape"]), expected[name]["dtype"])
                if got != want:
                    raise ValueError(
                        f"{self.path}: signature {kind[:-1]} {name!r} has shape {got[0]} "
                        f"and dtype {got[1]}; the manifest says {want[0]} and {want[1]}."
                    )
        self._inputs = {name: detail["index"] for name, detail in inputs.items()}
        self._outputs = {name: detail["index"] for name, detail in outputs.items()}
        self._shapes = {}
        self._single_name = next(iter(self._inputs)) if len(self._inputs) == 1 else None
        self._single_index = self._inputs.get(self._single_name)
        self._single_shape = None
        self._interpreter = interpreter

    def run_single(self, value):
        """Set the only input and invoke; read results with ``output``.

        The batch-1 fast path: no keyword dict, no output copies until asked
        (tokens are fetched only when the image goes on to the next stage).
        """
        if self._interpreter is None:
            self._load()
        interpreter = self._interpreter
        if self._single_shape != value.shape:
            interpreter.resize_tensor_input(self._single_index, value.shape)
            interpreter.allocate_tensors()
            self._single_shape = value.shape
            self._shapes = {self._single_name: value.shape}
        interpreter.set_tensor(self._single_index, value)
        interpreter.invoke()

    def output(self, name):
        """A copy of output ``name`` of the last invoke."""
        return self._interpreter.get_tensor(self._outputs[name])

    def __call__(self, **inputs):
        if self._interpreter is None:
            self._load()
        self._single_shape = None  # the next run_single re-checks the shape
        interpreter = self._interpreter
        resized = False
        for name, value in inputs.items():
            if self._shapes.get(name) != value.shape:
                interpreter.resize_tensor_input(self._inputs[name], value.shape)
                self._shapes[name] = value.shape
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for name, value in inputs.items():
            interpreter.set_tensor(self._inputs[name], value)
        interpreter.invoke()
        # get_tensor copies, so results survive the next invoke.
        return {name: interpreter.get_tensor(i) for name, i in self._outputs.items()}


class StagedRuntime:
    """Run exported TFLite stage graphs with the early-exit rule, as a phone would.

    Stage 1 runs on the whole batch; samples whose exit score reaches the
    threshold answer there, the others' tokens go on to stage 2, and so on;
    the last stage always answers.

    Images are given in the raw range that the manifest's ``preprocessing``
    describes (``input_range``) with the model's ``image_shape``; the runtime
    applies ``x * scale + offset`` (per channel when lists) before stage 1.
    It does not resize: resizing is the caller's job (``preprocessing.resize``).
    float32 and float64 images are accepted; uint8 images too when
    ``input_range`` is ``[0, 255]``. Images with NaN or inf pixels are refused
    (``predict(..., allow_non_finite=True)`` lets them through), and pixels far
    outside ``input_range`` give a warning once per runtime.

    The manifest is validated against its schema before any stage file is
    opened; every file it names must be a plain file name inside
    ``directory`` (no ``..``, no absolute path, no symlink leaving it). See
    docs/reliability.md.

    Args:
        directory: the export directory (holds ``manifest.json``).
        num_threads: LiteRT CPU threads per interpreter (``None``: LiteRT's
            default).
        verify_hashes: check every stage file's sha256 against the manifest
            when the runtime is created (fails early on a corrupt copy).
        thresholds: optional K thresholds in [0, 1] overriding the manifest's.

    Example (the export made on the TensorFlow backend, in-process):

    >>> from keras_dmpo import DMPOClassifier, EarlyExitModel
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 8])
    >>> manifest = EarlyExitModel(model, thresholds=[0.5, 0.0]).export_tflite("out/")
    >>> rt = StagedRuntime("out/", num_threads=1)
    >>> images = np.random.rand(4, 28, 28, 3).astype("float32")   # raw range [0, 1]
    >>> out = rt.predict(images)
    >>> out["labels"].shape, out["exit_index"].shape, out["flops"].shape
    ((4,), (4,), (4,))
    >>> rt.thresholds = [1.0, 0.0]    # trade compute for accuracy: all go deep
    >>> rt.predict(images)["exit_index"].tolist()
    [1, 1, 1, 1]
    """

    def __init__(self, directory, num_threads=None, verify_hashes=True, thresholds=None):
        self.directory = os.fspath(directory)
        # Schema first (pure Python), then every file's location and type,
        # then the hashes: nothing is opened before the manifest is accepted.
        self.manifest = _read_manifest(self.directory)
        manifest = self.manifest
        self.criterion = manifest["criterion"]
        self.exits = list(manifest["exits"])
        self.image_shape = tuple(manifest["image_shape"])
        self.flops_per_exit = np.array([stage["flops"] for stage in manifest["stages"]], dtype=np.float64)
        self.full_model_flops = manifest.get("full_model_flops")
        self.class_names = manifest.get("class_names")
        self._set_preprocessing(manifest["preprocessing"])
        entries = [(f"manifest['stages'][{k}]['file']", entry) for k, entry in enumerate(manifest["stages"])]
        if manifest.get("monolithic"):
            entries.append(("manifest['monolithic']['file']", manifest["monolithic"]))
        paths = [_resolve_bundle_file(self.directory, entry["file"], where) for where, entry in entries]
        if verify_hashes:
            for (_, entry), path in zip(entries, paths):
                self._verify_file(path, entry)
        graphs = [_Stage(path, entry, num_threads) for (_, entry), path in zip(entries, paths)]
        self._stages = graphs[: len(manifest["stages"])]
        self._monolithic = graphs[len(manifest["stages"])] if len(graphs) > len(self._stages) else None
        self._warned_range = False
        self.thresholds = (
            [stage["threshold"] for stage in manifest["stages"]] if thresholds is None else thresholds
        )

    # -- manifest -------------------------------------------------------------

    def _verify_file(self, path, entry):
        size = os.path.getsize(path)
        if size != entry["size_bytes"]:
            raise ValueError(
                f"size mismatch for {entry['file']!r} in {self.directory!r}: the "
                f"manifest says {entry['size_bytes']} bytes, the file has {size}. "
                "The file is truncated, corrupt or from another export."
            )
        digest = sha256_of_file(path)
        if digest != entry["sha256"].lower():
            raise ValueError(
                f"sha256 mismatch for {entry['file']!r} in {self.directory!r}: "
                f"the manifest says {entry['sha256']}, the file has {digest}. "
                "The file is corrupt or from another export."
            )

    def _set_preprocessing(self, preprocessing):
        # validate_manifest checked the types and lengths.
        self._scale = np.asarray(preprocessing["scale"], dtype=np.float32)
        self._offset = np.asarray(preprocessing["offset"], dtype=np.float32)
        self.input_range = tuple(float(v) for v in preprocessing["input_range"])
        self.accepts_uint8 = list(self.input_range) == [0.0, 255.0]

    @property
    def num_exits(self):
        return len(self._stages)

    @property
    def num_classes(self):
        return int(self.manifest["num_classes"])

    @property
    def thresholds(self):
        """The K exit thresholds in use (a copy; assign a new list to change)."""
        return list(self._thresholds)

    @thresholds.setter
    def thresholds(self, values):
        self._thresholds = [float(t) for t in exit_rule.check_thresholds(values, self.num_exits)]

    # -- inference ------------------------------------------------------------

    def preprocess(self, images, allow_non_finite=False):
        """Validate raw images and map them to the model's input space.

        Refuses NaN or inf pixels (``ValueError`` naming the first samples)
        unless ``allow_non_finite``; warns once per runtime when pixels lie far
        outside the manifest's ``preprocessing['input_range']``.
        """
        images = np.asarray(images)
        expected = (None,) + self.image_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"`images` must have shape (N, {', '.join(map(str, self.image_shape))}) "
                f"= {expected}; got {images.shape}. Resize to the manifest's "
                "preprocessing['resize'] and use its channel count."
            )
        allowed = ["float32", "float64"] + (["uint8"] if self.accepts_uint8 else [])
        if images.dtype.name not in allowed:
            raise ValueError(
                f"`images` dtype must be one of {allowed}; got {images.dtype}. "
                + (
                    ""
                    if self.accepts_uint8
                    else "uint8 is accepted only when preprocessing['input_range'] is [0, 255]."
                )
            )
        if not allow_non_finite:
            check_finite(
                images,
                "images",
                "Clean or drop those samples, or pass allow_non_finite=True to run "
                "them anyway (their outputs are then meaningless).",
            )
        if images.dtype != np.uint8 and images.size:
            self._warn_if_out_of_range(images)
        x = images.astype(np.float32) * self._scale + self._offset
        if not allow_non_finite:
            check_finite(
                x,
                "images",
                "They are finite but overflow float32 after x * scale + offset; "
                "pass raw pixels in preprocessing['input_range'].",
            )
        return x

    def _warn_if_out_of_range(self, images):
        if self._warned_range:
            return
        values = images if np.isfinite(images).all() else images[np.isfinite(images)]
        if not values.size:
            return
        low, high = self.input_range
        margin = INPUT_RANGE_TOLERANCE * (high - low)
        seen_low, seen_high = float(values.min()), float(values.max())
        if seen_low < low - margin or seen_high > high + margin:
            self._warned_range = True
            warnings.warn(
                f"`images` hold pixel values in [{seen_low:.4g}, {seen_high:.4g}], far "
                f"outside the manifest's preprocessing['input_range'] [{low:g}, {high:g}] "
                f"of raw pixels. StagedRuntime applies x * scale + offset itself: pass "
                "raw pixels in that range (not normalised or rescaled ones). Shown once "
                "per runtime.",
                RuntimeWarning,
                stacklevel=4,
            )

    def predict(self, images, batch_size=None, allow_non_finite=False):
        """Early-exit prediction, like ``EarlyExitModel.predict``.

        Args:
            images: ``(N, H, W, C)`` raw images (see the class docstring).
            batch_size: samples per stage-1 call; ``None`` runs all at once.
                Use 1 to mimic a phone answering one image at a time.
            allow_non_finite: let images with NaN or inf pixels through
                (their outputs are meaningless). By default they raise a
                ``ValueError`` naming the first such samples.

        Returns:
            dict of numpy arrays: ``labels`` (N,) int64, ``probabilities``
            (N, C) float32, ``exit_index`` (N,) int64 0-based position in
            ``exits``, ``flops`` (N,) float64 FLOPs spent per sample.
        """
        if batch_size is not None and (
            not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` must be an integer >= 1 or None; got {batch_size!r}.")
        x = self.preprocess(images, allow_non_finite=allow_non_finite)
        num_samples = x.shape[0]
        batch_size = num_samples if batch_size is None else int(batch_size)
        probabilities = np.zeros((num_samples, self.num_classes), dtype=np.float32)
        exit_index = np.zeros(num_samples, dtype=np.int64)
        batch_one = batch_size == 1
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            if batch_one:
                probabilities[start], exit_index[start] = self._predict_one(x[start:stop])
                continue
            p, e = self._predict_batch(x[start:stop])
            probabilities[start:stop] = p
            exit_index[start:stop] = e
        return {
            "labels": probabilities.argmax(axis=-1).astype(np.int64),
            "probabilities": probabilities,
            "exit_index": exit_index,
            "flops": self.flops_per_exit[exit_index],
        }

    def _predict_one(self, x):
        """One image ``(1, H, W, C)`` (what a phone does): the same rule as
        ``_predict_batch`` without its survivor bookkeeping."""
        value = x
        for k, stage in enumerate(self._stages):
            stage.run_single(value)
            p = stage.output("probabilities")
            if exit_rule.leaves(k, p, self._thresholds, self.criterion)[0]:
                return p[0], k
            value = stage.output("tokens")
        raise AssertionError("unreachable: the last stage always answers")

    def _predict_batch(self, x):
        num_samples = x.shape[0]
        probabilities = np.zeros((num_samples, self.num_classes), dtype=np.float32)
        exit_index = np.zeros(num_samples, dtype=np.int64)
        alive = np.arange(num_samples)  # original positions of the survivors
        feed = {self._input_name(0): x}
        last = self.num_exits - 1
        for k, stage in enumerate(self._stages):
            outputs = stage(**feed)
            p = outputs["probabilities"]
            leave = exit_rule.leaves(k, p, self._thresholds, self.criterion)
            probabilities[alive[leave]] = p[leave]
            exit_index[alive[leave]] = k
            if k == last or leave.all():
                break
            stay = ~leave
            alive = alive[stay]
            # Gather the survivors: the next stage runs at a smaller batch.
            feed = {self._input_name(k + 1): np.ascontiguousarray(outputs["tokens"][stay])}
        return probabilities, exit_index

    def _input_name(self, k):
        return self._stages[k].entry["inputs"][0]["name"]

    def predict_monolithic(self, images, batch_size=None, allow_non_finite=False):
        """Probabilities of the monolithic (single-graph, last-exit) model.

        ``images`` and ``allow_non_finite`` as in ``predict``.

        Returns:
            dict with ``labels`` (N,) and ``probabilities`` (N, C).
        """
        if self._monolithic is None:
            raise ValueError(
                f"The export in {self.directory!r} has no monolithic model "
                "(export it with monolithic_model=...)."
            )
        x = self.preprocess(images, allow_non_finite=allow_non_finite)
        batch_size = x.shape[0] if batch_size is None else int(batch_size)
        name = self._monolithic.entry["inputs"][0]["name"]
        chunks = [
            self._monolithic(**{name: x[i : i + batch_size]})["probabilities"]
            for i in range(0, x.shape[0], batch_size)
        ]
        probabilities = np.concatenate(chunks, axis=0)
        return {"labels": probabilities.argmax(axis=-1).astype(np.int64), "probabilities": probabilities}

    # -- timing ---------------------------------------------------------------

    def stage_latency(self, batch_size=1, repeats=50, warmup=5):
        """Median wall time in ms of one call of every stage (and monolithic).

        Inputs are random but of the right shape; stage cost does not depend
        on the values. Returns a dict ``{"stage_1": ms, ..., "monolithic": ms}``.
        """
        rng = np.random.default_rng(0)
        graphs = [(f"stage_{k + 1}", s) for k, s in enumerate(self._stages)]
        if self._monolithic is not None:
            graphs.append(("monolithic", self._monolithic))
        result = {}
        for label, stage in graphs:
            feed = {}
            for spec in stage.entry["inputs"]:
                shape = [batch_size] + [int(d) for d in spec["shape"][1:]]
                feed[spec["name"]] = rng.uniform(0, 1, shape).astype(np.float32)
            result[label] = _median_ms(lambda stage=stage, feed=feed: stage(**feed), repeats, warmup)
        return result

    def latency(self, images, repeats=5):
        """Median ms per image of ``predict(images, batch_size=1)``."""
        images = np.asarray(images)
        self.predict(images[:1], batch_size=1)  # load the stages
        return _median_ms(lambda: self.predict(images, batch_size=1), repeats, 0) / max(1, images.shape[0])


def _median_ms(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))
