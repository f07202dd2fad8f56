"""The web runtime's manifest checks (manifest.js) against the Python reader's.

Differential: the damaged manifests of the fuzz test (every key removed,
given a wrong type or an out-of-range value, the hand-written cases, and
arbitrary values at every position), made from the web export's manifest,
go through ``keras_dmpo.litert.validate_manifest`` and through
``validateManifest`` in Node. Both must accept or both refuse, and where the
Python message names the key the JS one does too.
"""

import copy
import json

import keras
import pytest
import web_checks
from export_checks import float_export, load_manifest
from test_manifest_fuzz import (
    FILE_NAME_CASES,
    OPTIONAL,
    OUT_OF_RANGE,
    SCHEMA_CASES,
    SWEEP_VALUES,
    describe,
    key_name,
    paths,
    with_change,
    wrong_type,
)

from keras_dmpo.litert import validate_manifest

# Both sides are plain code (no Keras): one backend is enough.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="web tests run under KERAS_BACKEND=tensorflow only"
)
# JSON cannot tell JavaScript 1.0 from 1: an integer written as a float is
# refused by Python only (docs/web.md says so).
JS_READS_FLOATS_AS_INTS = {"exit as float"}


def damaged(manifest):
    """``[(label, manifest, key)]``: the fuzz test's cases on this manifest, with
    the key a message should name (None for the hand-written cases)."""
    cases = []
    for path in paths(manifest):
        label, key = describe(path), key_name(path)
        value = manifest
        for step in path:
            value = value[step]
        cases.append((f"{label} removed", with_change(manifest, path, delete=True), key))
        cases.append(
            (f"{label} = {wrong_type(value)!r}", with_change(manifest, path, wrong_type(value)), key)
        )
        for bad in OUT_OF_RANGE.get(key, []):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and bad != value:
                cases.append((f"{label} = {bad!r}", with_change(manifest, path, bad), key))
        for sweep in SWEEP_VALUES:
            cases.append((f"{label} = {sweep!r} (sweep)", with_change(manifest, path, sweep), key))
    for label, (make, _) in SCHEMA_CASES.items():
        if label not in JS_READS_FLOATS_AS_INTS:
            cases.append((label, make(manifest), None))
    rule = {"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize", "op_config": {}}
    for label, fields in {
        "quantizer mode without its recipe": {"quantization": "mixed"},
        "quantizer mode with its recipe": {"quantization": "mixed", "quantization_recipe": [rule]},
        "a recipe of one's own": {"quantization": "custom", "quantization_recipe": [rule]},
        "converter mode with a recipe": {"quantization": "dynamic", "quantization_recipe": [rule]},
        "recipe empty": {"quantization": "static_int8", "quantization_recipe": []},
        "recipe rule with an unknown key": {
            "quantization": "mixed",
            "quantization_recipe": [{**rule, "speed": 1}],
        },
        "recipe regex not a string": {"quantization": "mixed", "quantization_recipe": [{**rule, "regex": 5}]},
        "recipe op_config not a dict": {
            "quantization": "mixed",
            "quantization_recipe": [{**rule, "op_config": "x"}],
        },
        "quantization_tool not a string": {
            "quantization": "mixed",
            "quantization_recipe": [rule],
            "quantization_tool": 5,
        },
    }.items():
        cases.append((label, {**manifest, **fields}, None))
    for label, name in FILE_NAME_CASES.items():
        for k in (1, "monolithic"):
            changed = copy.deepcopy(manifest)
            (changed["monolithic"] if k == "monolithic" else changed["stages"][k])["file"] = name
            cases.append((f"file {label} ({k})", changed, "file"))
    return cases


def python_outcome(manifest):
    try:
        validate_manifest(manifest)
    except ValueError as error:
        return str(error)
    return None


def test_js_and_python_refuse_the_same_manifests(tmp_path_factory, tmp_path):
    node, modules = web_checks.tools()
    directory, _ = float_export(tmp_path_factory, web=True)
    manifest = load_manifest(directory)
    cases = damaged(manifest)
    texts = [json.dumps(m) for _, m, _ in cases]  # NaN and inf as Python writes them
    js = web_checks.run_node(node, modules, "validate_manifests.mjs", texts, tmp_path, "manifests")
    mismatches, refused, named = [], 0, 0
    for (label, changed, word), js_message in zip(cases, js):
        py_message = python_outcome(changed)
        if (py_message is None) != (js_message is None):
            mismatches.append(f"{label}: Python {py_message!r}, JS {js_message!r}")
            continue
        if py_message is None:
            continue
        refused += 1
        # NaN and inf are not JSON to JavaScript (fetchManifest refuses such a text).
        assert js_message.startswith(("BundleError: ", "SyntaxError: ")), (label, js_message)
        if js_message.startswith("SyntaxError: "):
            continue
        if word and word in py_message:
            named += 1
            if word not in js_message:
                mismatches.append(f"{label}: Python names {word!r}, JS does not: {js_message}")
    print(
        f"\nmanifest checks, JS vs Python: {len(cases)} damaged manifests, {refused} refused by both, "
        f"{named} with the key named by both, {len(cases) - refused} accepted by both"
    )
    assert not mismatches, "\n".join(mismatches[:40])
    assert python_outcome(manifest) is None and refused > 1000
    # The optional keys stay optional in both.
    assert len(OPTIONAL) > 10
