"""Fuzzing StagedRuntime with damaged copies of a real export.

Every key of a real manifest (the tiny float32 export of export_checks) is
removed, given a value of the wrong type and, for numbers, an out-of-range
value; then come the hand-written cases (an extra stage, negative FLOPs, a
threshold as a string, '../x.tflite', an absolute path, symlinks leaving the
directory, FIFOs, broken JSON, ...). Each bad case must raise ValueError (or
FileNotFoundError for a file that is really missing), never another
exception type, and the message must name the key. A last sweep puts seven
arbitrary JSON values at every position and only asserts "a clear error or a
working runtime". The case counts are printed (-s) and quoted in
docs/reliability.md.

Each case runs in its own directory of hard links to the export, so only the
manifest is rewritten (the runtime never writes).
"""

import copy
import json
import os
import warnings

import pytest
from export_checks import float_export

from keras_dmpo.litert import StagedRuntime, validate_manifest

# Keys a manifest may lack (removing them must leave a working runtime).
OPTIONAL = {
    ("class_names",),
    ("quantization",),
    ("created_by",),
    ("flops_convention",),
    ("monolithic",),
    ("extra",),
    ("preprocessing", "resize"),
    ("preprocessing", "channels"),
    ("preprocessing", "color_order"),
    ("preprocessing", "formula"),
    ("monolithic", "signature_key"),
    ("monolithic", "flops"),
    # Exit-policy parameters that default to None.
    ("policy", "temperatures"),
    ("policy", "patience"),
    ("policy", "calibration"),
}
OPTIONAL_STAGE_KEYS = {"signature_key", "stage_flops", "fraction_of_full_model"}
# Out-of-range values by key name (for list elements: the list's key).
OUT_OF_RANGE = {
    "format_version": [3, 0],
    "num_exits": [0, 2, 4],
    "num_classes": [1, 0],
    "image_shape": [0, -3],
    "exits": [0, -1],
    "thresholds": [1.5, -0.1, float("nan")],
    "full_model_flops": [0, -1.0],
    "index": [0, 99],
    "size_bytes": [-1],
    "exit_block": [0, 99],
    "flops": [-1.0, float("inf")],
    "stage_flops": [-1.0],
    "fraction_of_full_model": [-0.5],
    "shape": [0, -2],
    "scale": [0, float("inf")],
    "offset": [float("nan")],
    "input_range": [float("inf")],
    "resize": [0, 31],
    "channels": [0, 1],
}
SWEEP_VALUES = [None, True, "x", -1, 1.5, [], {}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return float_export(tmp_path_factory)


@pytest.fixture(scope="module")
def original(exported):
    directory, reference = exported
    with open(os.path.join(directory, "manifest.json")) as handle:
        return directory, json.load(handle), reference["images"][:3]


class Cases:
    """Makes one private bundle per case (hard links) and runs the runtime."""

    def __init__(self, source, manifest, images, root):
        self.source, self.manifest, self.images = source, manifest, images
        self.root = str(root)
        self.count = 0

    def bundle(self):
        self.count += 1
        directory = os.path.join(self.root, f"case_{self.count}")
        os.makedirs(directory)
        for name in os.listdir(self.source):
            if name != "manifest.json":
                os.link(os.path.join(self.source, name), os.path.join(directory, name))
        return directory

    def run(self, manifest=None, prepare=None, raw=None):
        """Outcome of loading a bundle and predicting through every graph:
        ``None`` when it works, else the exception."""
        directory = self.bundle()
        path = os.path.join(directory, "manifest.json")
        if raw is not None:
            with open(path, "wb") as handle:
                handle.write(raw)
        else:
            with open(path, "w") as handle:
                json.dump(self.manifest if manifest is None else manifest, handle)
        if prepare is not None:
            prepare(directory)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runtime = StagedRuntime(directory)
                runtime.thresholds = [1.0] * runtime.num_exits  # every stage runs
                out = runtime.predict(self.images, batch_size=2)
                assert out["probabilities"].shape == (len(self.images), runtime.num_classes)
                if runtime._monolithic is not None:
                    runtime.predict_monolithic(self.images)
        except Exception as error:  # noqa: BLE001  (the point is to see which)
            return error
        return None


@pytest.fixture
def cases(original, tmp_path):
    directory, manifest, images = original
    return Cases(directory, manifest, images, tmp_path)


def paths(value, prefix=()):
    """Every position in a JSON value (not inside ``extra``, which is free-form)."""
    if prefix == ("extra",):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield prefix + (i,)
            yield from paths(item, prefix + (i,))


def get(value, path):
    for key in path:
        value = value[key]
    return value


def with_change(manifest, path, new=None, delete=False):
    changed = copy.deepcopy(manifest)
    parent = get(changed, path[:-1])
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return changed


def is_optional(path):
    return path in OPTIONAL or (len(path) == 3 and path[0] == "stages" and path[2] in OPTIONAL_STAGE_KEYS)


def wrong_type(value):
    if isinstance(value, bool):
        return "true"
    if isinstance(value, (int, float)):
        return str(value)  # a number as a string: "0.5"
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return "not a list"
    if isinstance(value, dict):
        return ["not", "a", "dict"]
    return 12345  # null


def key_name(path):
    """The key a message must name: the last dict key on the path."""
    return next(str(key) for key in reversed(path) if isinstance(key, str))


def describe(path):
    return "manifest" + "".join(f"[{key!r}]" for key in path)


def check_refused(error, label, word, failures, allowed=(ValueError,)):
    if error is None:
        failures.append(f"{label}: accepted")
    elif not isinstance(error, allowed):
        failures.append(f"{label}: {type(error).__name__}: {error}")
    elif word is not None and word not in str(error):
        failures.append(f"{label}: message does not name {word!r}: {error}")


def test_every_key_missing_wrong_type_and_out_of_range(cases, original):
    _, manifest, _ = original
    failures, refused, accepted = [], 0, 0
    for path in paths(manifest):
        label = describe(path)
        value = get(manifest, path)
        # Missing.
        error = cases.run(with_change(manifest, path, delete=True))
        if is_optional(path):
            if error is not None:
                failures.append(f"{label} removed (optional): {type(error).__name__}: {error}")
            accepted += 1
        else:
            check_refused(error, f"{label} removed", None, failures)
            refused += 1
        # Wrong type.
        error = cases.run(with_change(manifest, path, wrong_type(value)))
        check_refused(error, f"{label} = {wrong_type(value)!r}", key_name(path), failures)
        refused += 1
        # Out of range.
        for bad in OUT_OF_RANGE.get(key_name(path), []):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and bad != value:
                error = cases.run(with_change(manifest, path, bad))
                check_refused(error, f"{label} = {bad!r}", key_name(path), failures)
                refused += 1
    print(
        f"\nper-key fuzz: {refused} bad manifests refused, {accepted} optional keys removed "
        f"and accepted, {refused + accepted} cases"
    )
    assert refused > 300
    assert not failures, "\n".join(failures)


def _stage(manifest, k):
    return manifest["stages"][k]


def _extra_stage(m):
    m["stages"].append(copy.deepcopy(m["stages"][-1]))


def _json_edit(change):
    def make(manifest):
        changed = copy.deepcopy(manifest)
        change(changed)
        return changed

    return make


def _outputs_named(names):
    def change(m):
        m["stages"][0]["outputs"] = [{"name": n, "shape": [-1, 5], "dtype": "float32"} for n in names]

    return _json_edit(change)


SCHEMA_CASES = {
    # The cases the issue names, and more of the same kind.
    "extra stage": (_json_edit(_extra_stage), "stages"),
    "extra stage and exit": (
        _json_edit(
            lambda m: (
                _extra_stage(m),
                m["exits"].append(5),
                m["policy"]["thresholds"].append(0.0),
                m["policy"].update(num_exits=4),
            )
        ),
        "stages",
    ),
    "a stage dropped": (_json_edit(lambda m: m["stages"].pop(1)), "stages"),
    "no stages": (_json_edit(lambda m: m.update(stages=[], exits=[])), "exits"),
    "negative FLOPs": (_json_edit(lambda m: _stage(m, 0).update(flops=-5.0)), "flops"),
    "decreasing FLOPs": (_json_edit(lambda m: _stage(m, 2).update(flops=1.0)), "flops"),
    "threshold as a string": (
        _json_edit(lambda m: m["policy"]["thresholds"].__setitem__(0, "0.5")),
        "thresholds",
    ),
    "threshold NaN": (
        _json_edit(lambda m: m["policy"]["thresholds"].__setitem__(1, float("nan"))),
        "thresholds",
    ),
    "a second copy of the thresholds": (
        _json_edit(lambda m: m.update(thresholds=[0.5, 0.5, 0.0])),
        "thresholds",
    ),
    "a threshold per stage beside the policy": (
        _json_edit(lambda m: _stage(m, 0).update(threshold=0.123)),
        "threshold",
    ),
    "thresholds as a string": (
        _json_edit(lambda m: m["policy"].update(thresholds="0.5,0.5,0")),
        "thresholds",
    ),
    "patience thresholds": (
        _json_edit(lambda m: m["policy"].update(criterion="patience", patience=2)),
        "thresholds",
    ),
    "policy for other exits": (_json_edit(lambda m: m["policy"].update(num_exits=2)), "num_exits"),
    "exits not increasing": (_json_edit(lambda m: m.update(exits=[3, 1, 4])), "exits"),
    "exits repeated": (_json_edit(lambda m: m.update(exits=[1, 1, 4])), "exits"),
    "exit as float": (_json_edit(lambda m: m.update(exits=[1.0, 3, 4])), "exits"),
    "exit_block differs from exits": (_json_edit(lambda m: _stage(m, 1).update(exit_block=2)), "exit_block"),
    "format_version 1.0": (_json_edit(lambda m: m.update(format_version=1.0)), "format_version"),
    "format_version true": (_json_edit(lambda m: m.update(format_version=True)), "format_version"),
    "format onnx": (_json_edit(lambda m: m.update(format="onnx")), "onnx"),
    "num_classes differs from the graphs": (_json_edit(lambda m: m.update(num_classes=6)), "num_classes"),
    "class_names count": (_json_edit(lambda m: m.update(class_names=["a", "b"])), "class_names"),
    "criterion unknown": (_json_edit(lambda m: m["policy"].update(criterion="margin")), "criterion"),
    "quantization unknown": (_json_edit(lambda m: m.update(quantization="int4")), "quantization"),
    "image_shape 2 dims": (_json_edit(lambda m: m.update(image_shape=[32, 32])), "image_shape"),
    "image_shape 4 dims": (_json_edit(lambda m: m.update(image_shape=[32, 32, 3, 1])), "image_shape"),
    "preprocessing a list": (_json_edit(lambda m: m.update(preprocessing=[1, 2])), "preprocessing"),
    "preprocessing unknown step": (
        _json_edit(lambda m: m["preprocessing"].update(mean=[0.5, 0.5, 0.5])),
        "mean",
    ),
    "scale per channel of wrong length": (
        _json_edit(lambda m: m["preprocessing"].update(scale=[1, 2])),
        "scale",
    ),
    "input_range reversed": (
        _json_edit(lambda m: m["preprocessing"].update(input_range=[255, 0])),
        "input_range",
    ),
    "sha256 not hex": (_json_edit(lambda m: _stage(m, 0).update(sha256="g" * 64)), "sha256"),
    "sha256 short": (_json_edit(lambda m: _stage(m, 0).update(sha256="abc")), "sha256"),
    "sha256 of another file": (_json_edit(lambda m: _stage(m, 0).update(sha256="0" * 64)), "sha256"),
    "size_bytes wrong": (
        _json_edit(lambda m: _stage(m, 1).update(size_bytes=_stage(m, 1)["size_bytes"] + 1)),
        "size",
    ),
    "two inputs": (
        _json_edit(
            lambda m: _stage(m, 1)["inputs"].append({"name": "extra", "shape": [-1, 2], "dtype": "float32"})
        ),
        "inputs",
    ),
    "input dtype uint8": (_json_edit(lambda m: _stage(m, 0)["inputs"][0].update(dtype="uint8")), "dtype"),
    "input dtype unknown": (_json_edit(lambda m: _stage(m, 0)["inputs"][0].update(dtype="float8")), "dtype"),
    "input shape not the image": (
        _json_edit(lambda m: _stage(m, 0)["inputs"][0].update(shape=[-1, 28, 28, 3])),
        "shape",
    ),
    "tokens shapes do not chain": (
        _json_edit(lambda m: _stage(m, 1)["inputs"][0].update(shape=[-1, 18, 32])),
        "shape",
    ),
    "input renamed (graph disagrees)": (
        _json_edit(lambda m: _stage(m, 1)["inputs"][0].update(name="pixels")),
        "inputs",
    ),
    "output missing": (_outputs_named(["tokens"]), "outputs"),
    "output extra": (_outputs_named(["tokens", "probabilities", "logits"]), "outputs"),
    "output names repeated": (_outputs_named(["probabilities", "probabilities"]), "name"),
    "probabilities of 4 classes": (
        _json_edit(lambda m: _stage(m, 2)["outputs"][0].update(shape=[-1, 4])),
        "probabilities",
    ),
    "output dtype differs from the graph": (
        _json_edit(lambda m: _stage(m, 2)["outputs"][0].update(dtype="float16")),
        "dtype",
    ),
    "signature key unknown": (
        _json_edit(lambda m: _stage(m, 1).update(signature_key="nope")),
        "signature_key",
    ),
    "monolithic outputs tokens": (
        _json_edit(
            lambda m: m["monolithic"]["outputs"].append(
                {"name": "tokens", "shape": [-1, 17, 32], "dtype": "float32"}
            )
        ),
        "monolithic",
    ),
    "monolithic negative flops": (_json_edit(lambda m: m["monolithic"].update(flops=-1)), "flops"),
    "stage not a dict": (_json_edit(lambda m: m["stages"].__setitem__(1, "stage_2.tflite")), "stages"),
    "manifest a list": (lambda m: [m], "JSON object"),
    "manifest a string": (lambda m: "manifest", "JSON object"),
}

FILE_NAME_CASES = {
    "parent traversal": "../x.tflite",
    "parent traversal of a real file": "../case_1/stage_1.tflite",
    "dot dot": "..",
    "dot": ".",
    "sub-directory": "sub/stage_1.tflite",
    "backslash": "..\\x.tflite",
    "NUL byte": "stage_1.tflite\x00",
    "empty": "",
    "the manifest itself": "manifest.json",
    "very long": "s" * 300 + ".tflite",
    "same file as stage 1": "stage_1.tflite",
}


def test_schema_cases(cases, original):
    _, manifest, _ = original
    failures = []
    for label, (make, word) in SCHEMA_CASES.items():
        check_refused(cases.run(make(manifest)), label, word, failures)
    for label, name in FILE_NAME_CASES.items():
        for k in (1, "monolithic"):
            changed = copy.deepcopy(manifest)
            entry = changed["monolithic"] if k == "monolithic" else changed["stages"][k]
            entry["file"] = name
            check_refused(cases.run(changed), f"{label} ({k})", "file", failures)
    # An absolute path, even of the right file with the right hash.
    changed = copy.deepcopy(manifest)
    changed["stages"][0]["file"] = os.path.join(cases.source, "stage_1.tflite")
    check_refused(cases.run(changed), "absolute path", "file", failures)
    count = len(SCHEMA_CASES) + 2 * len(FILE_NAME_CASES) + 1
    print(f"\nhand-written schema and file-name cases: {count}")
    assert not failures, "\n".join(failures)


def _replace(name, make):
    def prepare(directory):
        path = os.path.join(directory, name)
        os.remove(path)  # a hard link: never write into the shared file
        make(directory, path)

    return prepare


def test_filesystem_cases(cases, original, tmp_path):
    source, manifest, _ = original
    with open(os.path.join(source, "stage_2.tflite"), "rb") as handle:
        payload = handle.read()
    (tmp_path / "original_stage_2").write_bytes(payload)
    (tmp_path.parent / "original_stage_2").write_bytes(payload)

    def write_inside(directory, path):
        real = os.path.join(directory, "real_stage_2.bin")
        with open(real, "wb") as handle:
            handle.write(payload)
        os.symlink("real_stage_2.bin", path)

    def truncated(directory, path):
        with open(path, "wb") as handle:
            handle.write(payload[: len(payload) // 2])

    def corrupt(directory, path):
        with open(path, "wb") as handle:
            handle.write(bytes([payload[0] ^ 0xFF]) + payload[1:])

    refused = {
        # label: (prepare, expected exception, word in the message)
        "symlink pointing outside (same bytes)": (
            _replace("stage_2.tflite", lambda d, p: os.symlink(str(tmp_path / "original_stage_2"), p)),
            ValueError,
            "outside",
        ),
        "relative symlink escaping": (
            _replace("stage_2.tflite", lambda d, p: os.symlink("../../original_stage_2", p)),
            ValueError,
            "outside",
        ),
        "symlink to the directory itself": (
            _replace("stage_2.tflite", lambda d, p: os.symlink(".", p)),
            ValueError,
            "stage_2",
        ),
        "a directory instead of a file": (
            _replace("stage_2.tflite", lambda d, p: os.mkdir(p)),
            ValueError,
            "regular file",
        ),
        "a FIFO instead of a file": (
            _replace("stage_2.tflite", lambda d, p: os.mkfifo(p)),
            ValueError,
            "regular file",
        ),
        "truncated file": (_replace("stage_2.tflite", truncated), ValueError, "size"),
        "corrupt file": (_replace("stage_2.tflite", corrupt), ValueError, "sha256"),
        "missing stage file": (_replace("stage_3.tflite", lambda d, p: None), FileNotFoundError, "stage_3"),
        "missing monolithic file": (
            _replace("monolithic.tflite", lambda d, p: None),
            FileNotFoundError,
            "monolithic",
        ),
        "dangling symlink": (
            _replace("stage_1.tflite", lambda d, p: os.symlink("nowhere.tflite", p)),
            FileNotFoundError,
            "stage_1",
        ),
    }
    failures = []
    for label, (prepare, expected, word) in refused.items():
        check_refused(cases.run(prepare=prepare), label, word, failures, allowed=(expected,))
    raw = {
        "empty manifest": b"",
        "truncated JSON": json.dumps(manifest).encode()[:200],
        "not UTF-8": b"\xff\xfe{\x00",
        "deep nesting": b"[" * 100_000 + b"]" * 100_000,
        "huge integer literal": b'{"format_version": ' + b"9" * 10_000 + b"}",
        "JSON null": b"null",
        "too large": b" " * (17 << 20) + b"{}",
    }
    for label, payload_bytes in raw.items():
        check_refused(cases.run(raw=payload_bytes), label, None, failures)
    # Allowed: a symlink to another file inside the directory.
    error = cases.run(prepare=_replace("stage_2.tflite", write_inside))
    if error is not None:
        failures.append(f"symlink inside the directory: {type(error).__name__}: {error}")
    # The directory or its manifest missing.
    for label, target in (("no directory", str(tmp_path / "nowhere")), ("no manifest", str(tmp_path))):
        try:
            StagedRuntime(target)
            failures.append(f"{label}: accepted")
        except FileNotFoundError:
            pass
        except Exception as error:  # noqa: BLE001
            failures.append(f"{label}: {type(error).__name__}: {error}")
    print(f"\nfile-system and raw-JSON cases: {len(refused) + len(raw) + 3}")
    assert not failures, "\n".join(failures)


def test_sweep_of_arbitrary_values_never_crashes(cases, original):
    """Any JSON value anywhere: a ValueError/FileNotFoundError or a runtime
    that works; never a TypeError, KeyError, IndexError, AttributeError..."""
    _, manifest, _ = original
    failures, refused, accepted = [], 0, []
    for path in paths(manifest):
        for value in SWEEP_VALUES:
            current = get(manifest, path)
            if type(value) is type(current) and value == current:
                continue
            changed = with_change(manifest, path, value)
            try:
                validate_manifest(changed)
            except ValueError:
                refused += 1
                continue
            except Exception as error:  # noqa: BLE001
                failures.append(f"{describe(path)} = {value!r}: {type(error).__name__}: {error}")
                continue
            error = cases.run(changed)
            if error is None:
                accepted.append(f"{describe(path)} = {value!r}")
            elif isinstance(error, (ValueError, FileNotFoundError)):
                refused += 1
            else:
                failures.append(f"{describe(path)} = {value!r}: {type(error).__name__}: {error}")
    print(
        f"\nsweep: {refused + len(accepted)} cases, {refused} refused, "
        f"{len(accepted)} accepted (valid values): {accepted}"
    )
    assert not failures, "\n".join(failures)
