"""The manifest.json schema of an export and the checks on its bundle files.

Pure Python and numpy: a manifest is checked completely (types, ranges,
file names, tensor specs, preprocessing) before any stage file is opened.
The schema is described in docs/export.md; what is refused and why, in
docs/reliability.md.
"""

import json
import math
import os
import stat

from keras_dmpo.policy import ExitPolicy, rule

MANIFEST_NAME = "manifest.json"
# 2: one "policy" object (ExitPolicy.to_dict) instead of the flat criterion,
# thresholds, temperatures and patience keys and a threshold per stage.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
FORMAT1_POLICY_KEYS = ("criterion", "thresholds", "temperatures", "patience")
# Quantization modes of the TFLite converter (post-training, in
# ``convert_to_tflite``); the browser page reads these only.
CONVERTER_QUANTIZATIONS = (None, "dynamic", "float16", "int8")
# Named recipes of the LiteRT quantizer (``keras_dmpo.export.quantizer``),
# applied to the float32 graphs; "custom" is a recipe of the user's own.
QUANTIZER_RECIPES = (
    "weight_only_int8",
    "weight_only_int4",
    "dynamic_int8",
    "dynamic_int4_blockwise",
    "static_int8",
    "static_int16",
    "mixed",
    "int8_matmuls",
)
CUSTOM_RECIPE = "custom"
# Every value of manifest["quantization"]. A quantizer mode also writes the
# recipe it applied (manifest["quantization_recipe"]); manifests without that
# key are converter exports (all manifests written before the quantizer).
QUANTIZATION_MODES = CONVERTER_QUANTIZATIONS + QUANTIZER_RECIPES + (CUSTOM_RECIPE,)
# The keys of one recipe rule, as the LiteRT quantizer reads them.
RECIPE_RULE_KEYS = ("regex", "operation", "algorithm_key", "op_config")
# A manifest is a few KB; anything this large is not one (and would be slow
# to parse).
MAX_MANIFEST_BYTES = 16 << 20
PREPROCESSING_KEYS = ("scale", "offset", "input_range", "resize", "channels", "color_order", "formula")
# The leading dimension of every graph tensor: dynamic, or the fixed batch
# of one that LiteRT.js needs.
BATCH_DIMENSIONS = (-1, 1)
TENSOR_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")


def _describe(value):
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


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
    for name, output in sorted(outputs.items()):
        # The runtime reads float32 and feeds the tokens to the next stage's float32 input.
        if output["dtype"] != "float32":
            check.fail(
                f"{where}['outputs'] {name!r} dtype", output["dtype"], "'float32' (float graph outputs)"
            )
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


def _refuse_unknown_keys(check, value, known, where, says):
    unknown = sorted(set(value) - set(known))
    if unknown:
        check.fail(f"{where} key {unknown[0]!r}", value[unknown[0]], f"absent: {says} {list(known)}")


def _check_preprocessing(check, value, image_shape):
    where = "manifest['preprocessing']"
    if not isinstance(value, dict):
        check.fail(where, value, "a dict (scale, offset, input_range, ...)")
    # An unknown step (say "mean") would be silently skipped: refuse it.
    _refuse_unknown_keys(check, value, PREPROCESSING_KEYS, where, "known keys are")
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
    """Check a TFLite export manifest against its schema (format 1 or 2).

    Pure Python: no file is opened. File names must be plain names inside
    the export directory (``StagedRuntime`` also refuses symlinks that leave
    it). Raises ``ValueError`` naming the key, the value and what is
    expected; returns ``manifest`` unchanged.
    """
    check = _Checker(source)
    _check_header(check, manifest, source)
    image_shape, num_classes, exits = _check_model_keys(check, manifest)
    legacy_thresholds = _check_policy(check, manifest, len(exits))
    files = _check_stages(check, manifest, image_shape, num_classes, exits, legacy_thresholds)
    _check_batch_dimension(check, manifest)
    seen = {}
    for where, name in files:
        if name in seen:
            check.fail(where, name, f"a file of its own (also named by {seen[name]})")
        seen[name] = where
    return manifest


def _graph_entries(manifest):
    """``[(where, entry)]`` of every graph: the stages, then the monolithic one."""
    entries = [(f"manifest['stages'][{i}]", entry) for i, entry in enumerate(manifest["stages"])]
    if manifest.get("monolithic") is not None:
        entries.append(("manifest['monolithic']", manifest["monolithic"]))
    return entries


def _check_batch_dimension(check, manifest):
    """Every tensor of every graph has the same leading (batch) dimension:
    -1 (dynamic, resized by the runtime) or 1 (a ``web=True`` export, for
    runtimes that cannot resize, such as LiteRT.js)."""
    first = manifest["stages"][0]["inputs"][0]["shape"][0]
    if first not in BATCH_DIMENSIONS:
        check.fail("manifest['stages'][0]['inputs'][0]['shape'][0]", first, "-1 (dynamic batch) or 1 (web)")
    for where, entry in _graph_entries(manifest):
        for kind in ("inputs", "outputs"):
            for j, spec in enumerate(entry[kind]):
                if spec["shape"][0] != first:
                    check.fail(
                        f"{where}['{kind}'][{j}]['shape'][0]",
                        spec["shape"][0],
                        f"{first}, the batch dimension of manifest['stages'][0]'s input (one kind of graph per bundle)",
                    )


def fixed_batch_size(manifest):
    """1 for a validated manifest of batch-1 graphs (``web=True``), None for dynamic ones."""
    first = manifest["stages"][0]["inputs"][0]["shape"][0]
    return None if first == -1 else first


def _check_header(check, manifest, source):
    """The object itself, the schema version, the format and the version strings."""
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


def _check_model_keys(check, manifest):
    """Image shape, classes, criterion, quantization, preprocessing, exits,
    thresholds and FLOPs; returns what the stage checks need."""
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
    _check_quantization(check, manifest)
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
    full = check.require(manifest, "full_model_flops", "the manifest", "a positive number")
    if not _is_number(full) or full <= 0:
        check.fail("manifest['full_model_flops']", full, "a positive finite number")
    if "extra" in manifest and not isinstance(manifest["extra"], dict):
        check.fail("manifest['extra']", manifest["extra"], "a dict")
    return image_shape, num_classes, exits


def _check_quantization(check, manifest):
    """``quantization`` and, for a quantizer mode, the recipe it applied."""
    quantization = manifest.get("quantization")
    if quantization not in QUANTIZATION_MODES:
        check.fail("manifest['quantization']", quantization, f"one of {list(QUANTIZATION_MODES)}")
    recipe = manifest.get("quantization_recipe")
    if quantization in CONVERTER_QUANTIZATIONS:
        # The converter's modes have no recipe: one here would describe
        # something that was not applied.
        if recipe is not None:
            check.fail(
                "manifest['quantization_recipe']",
                recipe,
                f"null or absent (quantization {quantization!r} is the converter's, not a recipe)",
            )
        return
    _check_recipe_rules(check, recipe, "manifest['quantization_recipe']")
    if "quantization_tool" in manifest:
        check.string(manifest["quantization_tool"], "manifest['quantization_tool']", optional=True)


def _check_recipe_rules(check, recipe, where):
    """The shape of a LiteRT quantizer recipe: a non-empty list of rules
    ``{"regex", "operation", "algorithm_key", "op_config"}`` with string
    regex, operation and algorithm key (what each means is the quantizer's
    business; the runtime only needs to know the record is one)."""
    expected = 'a non-empty list of recipe rules {"regex", "operation", "algorithm_key", "op_config"}'
    if not isinstance(recipe, list) or not recipe:
        check.fail(where, recipe, expected)
    for i, entry in enumerate(recipe):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            check.fail(at, entry, 'a dict {"regex", "operation", "algorithm_key", "op_config"}')
        _refuse_unknown_keys(check, entry, RECIPE_RULE_KEYS, at, "a rule has keys")
        for key in ("regex", "operation", "algorithm_key"):
            value = check.require(entry, key, at, "a string")
            if not isinstance(value, str) or not value:
                check.fail(f"{at}[{key!r}]", value, "a non-empty string")
        if "op_config" in entry and not isinstance(entry["op_config"], dict):
            check.fail(f"{at}['op_config']", entry["op_config"], "a dict")
    return recipe


def _check_policy(check, manifest, k):
    """The exit policy: format 2's ``policy`` object, or format 1's flat
    keys. Returns format 1's thresholds (each stage repeats its own), else
    None."""
    if manifest["format_version"] >= 2:
        # Format 1's flat keys next to the policy would be a second, ignored copy.
        for key in FORMAT1_POLICY_KEYS:
            if key in manifest:
                check.fail(
                    f"manifest[{key!r}]", manifest[key], "absent in format 2 (it lives in manifest['policy'])"
                )
        data = check.require(manifest, "policy", "the manifest", "the exit policy (ExitPolicy.to_dict)")
        if isinstance(data, dict) and "num_exits" in data and data["num_exits"] != k:
            check.fail("manifest['policy']['num_exits']", data["num_exits"], f"{k} (len(manifest['exits']))")
        try:
            ExitPolicy.from_dict(data, "manifest['policy']")
        except ValueError as error:
            raise ValueError(f"{check.source}: {error}") from None
        return None
    criterion = check.require(manifest, "criterion", "the manifest", f"one of {rule.CRITERIA}")
    if criterion not in rule.CRITERIA:
        check.fail("manifest['criterion']", criterion, f"one of {list(rule.CRITERIA)}")
    thresholds = check.list_of(
        check.require(manifest, "thresholds", "the manifest", f"{k} numbers in [0, 1]"),
        "manifest['thresholds']",
        k,
        f"a list of {k} numbers in [0, 1] (one per exit)",
    )
    for i, t in enumerate(thresholds):
        check.number(t, f"manifest['thresholds'][{i}]", 0.0, 1.0)
    # Absent in manifests written before temperatures and patience: no
    # temperature scaling, and then the criterion cannot be patience.
    temperatures = manifest.get("temperatures")
    if temperatures is not None:
        check.list_of(temperatures, "manifest['temperatures']", k, f"null or a list of {k} positive numbers")
        for i, t in enumerate(temperatures):
            if not _is_number(t) or t <= 0:
                check.fail(f"manifest['temperatures'][{i}]", t, "a positive finite number")
    patience = manifest.get("patience")
    if criterion == "patience":
        if not _is_int(patience) or not 2 <= patience <= k:
            check.fail("manifest['patience']", patience, f"an integer in [2, {k}] (criterion 'patience')")
    elif patience is not None:
        check.fail("manifest['patience']", patience, f"null (criterion {criterion!r} has no patience)")
    return thresholds


def manifest_policy(manifest):
    """The ``ExitPolicy`` of a validated manifest, of either format."""
    k = len(manifest["exits"])
    if manifest["format_version"] >= 2:
        return ExitPolicy.from_dict(manifest["policy"], "manifest['policy']")
    # Format 1 kept its calibration record in manifest["extra"], unread.
    return ExitPolicy.from_legacy(manifest, k, "manifest", calibration=False)


def _check_stages(check, manifest, image_shape, num_classes, exits, thresholds):
    """Every stage entry (and the monolithic one) against the model keys and
    each other; returns ``[(where, file name)]`` for the duplicate check."""
    k = len(exits)
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
        if thresholds is None and "threshold" in entry:
            check.fail(
                f"{where}['threshold']",
                entry["threshold"],
                "absent in format 2 (it lives in manifest['policy'])",
            )
        if thresholds is not None:  # format 1 repeats each threshold in its stage
            threshold = check.number(
                check.require(entry, "threshold", where, "a number in [0, 1]"),
                f"{where}['threshold']",
                0.0,
                1.0,
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
    return files


def read_manifest(directory):
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


def resolve_bundle_file(directory, name, where):
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
