"""LiteRT quantizer recipes as export modes: every named recipe against Keras,
calibration of later stages on earlier stages' tokens, the recipe in the
manifest, blockwise fallbacks, a recipe of one's own, and the errors.

The conversions run on the TensorFlow backend in-process (the quantizer
rewrites the converter's float graphs). On JAX and torch the export of an
EarlyExitModel goes through the TensorFlow subprocess, which runs this same
code: one smoke test covers that path there; the argument checks run on
every backend. The float graphs are converted once per module (a caching
wrapper around ``convert_to_tflite``), so each mode costs only its
quantization.
"""

import json
import os
import subprocess

import keras
import numpy as np
import pytest
from export_checks import build_stage_models, export_spec, keras_exit_probabilities, load_manifest, raw_images

from keras_dmpo.export import quantizer
from keras_dmpo.export import tflite as tflite_export
from keras_dmpo.export.quantization import MIN_CALIBRATION_IMAGES, resolve_quantization
from keras_dmpo.export.tflite import export_stage_graphs
from keras_dmpo.litert import StagedRuntime, validate_manifest
from keras_dmpo.litert.manifest import QUANTIZER_RECIPES

BACKEND = keras.backend.backend()
needs_tf = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="converts in-process (TensorFlow backend); on JAX/torch test_early_exit_model_exports_mixed "
    "covers the same code through the export subprocess",
)
EXITS = [2, 4]  # two stages: stage 2 is calibrated on stage 1's tokens
SPEC = export_spec(EXITS, [0.0, 0.0])

# Tolerances of LiteRT against Keras per mode, on the tiny random ViT of
# export_checks (4 blocks, width 32, head weights of std 1, so logits of std
# ~6 and sharp, near-random probabilities: a small logit error moves p a
# lot, and many images have two classes close together, whose label flips).
# (max |dp| over images, classes and both exits; label agreement at each exit.)
# Measured on these 32 images (calibration: 64 others) with litert-quantizer
# 0.11.0 and ai-edge-litert 2.3.0, then rounded up / down with a margin:
TOLERANCES = {
    # int8 weights, one scale per output channel (error <= 1/254 of the
    # channel's largest weight), float activations: measured 0.03-0.07 |dp|,
    # agreement 1.00 / 0.91 -- as tight as the model allows (the converter's
    # "dynamic" gives 0.10).
    "weight_only_int8": (0.15, 0.85),
    # The same weights, and the kernel quantizes its float input per call to
    # int8: measured 0.04-0.10, agreement 0.97 / 0.91.
    "dynamic_int8": (0.2, 0.85),
    # 16 levels per channel (error up to 1/14 of the largest weight): on this
    # sharp toy head int4 is coarse, measured 0.60-0.82 |dp| and agreement
    # 0.56 / 0.81 (blockwise: 0.54-0.80, 0.88 / 0.69); a layer alone matches
    # a numpy int4 simulation to 1e-6, so this is the format, not a bug. A
    # sanity bound only.
    "weight_only_int4": (1.0, 0.4),
    "dynamic_int4_blockwise": (1.0, 0.5),
    # Static activations, one scale per tensor from the calibration
    # images' extremes: int8 measured 0.11-0.16 |dp|, agreement 1.00 / 0.91;
    # int16 0.02-0.06, 1.00 / 0.94; mixed 0.12-0.15, 1.00 / 0.88.
    "static_int8": (0.3, 0.8),
    "static_int16": (0.15, 0.85),
    "mixed": (0.3, 0.75),
    # Static int8 into the fully connected layers only: measured 0.08-0.12, agreement 1.00 / 0.91.
    "int8_matmuls": (0.2, 0.85),
}
assert set(TOLERANCES) == set(QUANTIZER_RECIPES)


@pytest.fixture(scope="module")
def stage_models():
    models, _ = build_stage_models(exits=EXITS)
    return models


@pytest.fixture(scope="module")
def float_graph_cache():
    return {}


@pytest.fixture
def cached_conversion(monkeypatch, float_graph_cache):
    """Convert each float graph once per module: the quantizer modes start
    from the same float32 graphs (converter modes are not cached)."""
    real = tflite_export.convert_to_tflite

    def convert(model, quantization=None, representative_data=None, batch_size=None):
        if quantization is not None:
            return real(model, quantization, representative_data, batch_size)
        key = (id(model), batch_size)
        if key not in float_graph_cache:
            float_graph_cache[key] = real(model, batch_size=batch_size)
        return float_graph_cache[key]

    monkeypatch.setattr(tflite_export, "convert_to_tflite", convert)


@pytest.fixture(scope="module")
def test_images():
    images = raw_images(n=32, seed=1)
    return images, images.astype("float32") / 255


@pytest.fixture(scope="module")
def calibration_images():
    return raw_images(n=64, seed=2).astype("float32") / 255


def _runtime_vs_keras(directory, stage_models, test_images):
    """max |dp| and label agreement of LiteRT vs Keras at each exit."""
    images, model_images = test_images
    runtime = StagedRuntime(directory)
    results = []
    for k, reference in enumerate(keras_exit_probabilities(stage_models, model_images)):
        runtime.thresholds = [0.0, 0.0] if k == 0 else [1.0, 0.0]  # every image answers at exit k
        out = runtime.predict(images)
        assert out["probabilities"].dtype == np.float32 and (out["exit_index"] == k).all()
        results.append(
            (
                float(np.abs(out["probabilities"] - reference).max()),
                float(np.mean(out["labels"] == reference.argmax(-1))),
            )
        )
    # Dynamic batch kept: one image at a time gives what the whole batch gives.
    one_by_one = runtime.predict(images[:6], batch_size=1)["probabilities"]
    np.testing.assert_allclose(one_by_one, runtime.predict(images[:6])["probabilities"], atol=1e-5)
    return results


@needs_tf
@pytest.mark.parametrize("mode", QUANTIZER_RECIPES)
def test_every_recipe_matches_keras(
    mode, stage_models, cached_conversion, test_images, calibration_images, tmp_path
):
    manifest = export_stage_graphs(
        str(tmp_path / mode), stage_models, SPEC, quantization=mode, representative_data=calibration_images
    )
    assert manifest["quantization"] == mode
    assert manifest["quantization_tool"].startswith("litert-quantizer ")
    assert manifest["quantization_recipe"][: len(quantizer.named_recipe(mode))] == quantizer.named_recipe(
        mode
    )
    for stage in manifest["stages"]:  # float32 in and out, dynamic batch
        assert all(
            t["dtype"] == "float32" and t["shape"][0] == -1 for t in stage["inputs"] + stage["outputs"]
        )
    results = _runtime_vs_keras(str(tmp_path / mode), stage_models, test_images)
    max_dp, min_agreement = TOLERANCES[mode]
    sizes = [s["size_bytes"] for s in manifest["stages"]]
    print(f"{mode}: (max |dp|, agreement) per exit {results}, stage sizes {sizes}")
    for diff, agreement in results:
        assert diff <= max_dp and agreement >= min_agreement


@needs_tf
def test_later_stages_calibrate_on_the_earlier_stages_tokens(
    stage_models, cached_conversion, calibration_images, tmp_path, monkeypatch
):
    seen = []
    real = quantizer.quantize_flatbuffer

    def spy(flatbuffer, recipe, calibration_inputs=None, what="the graph"):
        seen.append(np.array(calibration_inputs))
        return real(flatbuffer, recipe, calibration_inputs, what)

    monkeypatch.setattr(quantizer, "quantize_flatbuffer", spy)
    export_stage_graphs(
        str(tmp_path / "out"),
        stage_models,
        SPEC,
        quantization="mixed",
        representative_data=calibration_images,
    )
    tokens = keras.ops.convert_to_numpy(stage_models[0](calibration_images)["tokens"])
    assert len(seen) == 2
    np.testing.assert_array_equal(seen[0], calibration_images)
    np.testing.assert_allclose(seen[1], tokens, atol=1e-5)  # the float Keras stage's tokens


@needs_tf
def test_a_recipe_of_ones_own_is_recorded_as_custom(stage_models, cached_conversion, test_images, tmp_path):
    # int8 weights on the fully connected layers only, everything else float.
    recipe = [
        {
            "regex": ".*",
            "operation": "FULLY_CONNECTED",
            "algorithm_key": "min_max_uniform_quantize",
            "op_config": {
                "weight_tensor_config": {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE"},
                "compute_precision": "FLOAT",
                "explicit_dequantize": True,
            },
        }
    ]
    manifest = export_stage_graphs(str(tmp_path / "custom"), stage_models, SPEC, quantization=recipe)
    assert manifest["quantization"] == "custom"
    assert manifest["quantization_recipe"] == recipe + list(quantizer.FLOAT_IO_RULES)
    assert load_manifest(str(tmp_path / "custom"))["quantization_recipe"] == manifest["quantization_recipe"]
    for diff, agreement in _runtime_vs_keras(str(tmp_path / "custom"), stage_models, test_images):
        assert diff <= 0.15 and agreement >= 0.85  # as weight_only_int8


@needs_tf
def test_batch_one_graphs_for_the_browser_take_a_recipe(
    stage_models, cached_conversion, test_images, calibration_images, tmp_path
):
    # web=True: fixed batch of 1, so calibration feeds one image per invoke.
    manifest = export_stage_graphs(
        str(tmp_path / "web"),
        stage_models,
        SPEC,
        quantization="mixed",
        representative_data=calibration_images,
        web=True,
    )
    assert all(t["shape"][0] == 1 for s in manifest["stages"] for t in s["inputs"] + s["outputs"])
    for diff, agreement in _runtime_vs_keras(str(tmp_path / "web"), stage_models, test_images):
        assert diff <= TOLERANCES["mixed"][0] and agreement >= TOLERANCES["mixed"][1]


@needs_tf
def test_blocks_that_do_not_fit_fall_back_to_channels():
    from keras_dmpo.export.tflite_convert import convert_to_tflite

    inputs = keras.Input((64,), name="x")
    hidden = keras.layers.Dense(16, name="narrow")(inputs)  # 64 inputs: two blocks of 32
    model = keras.Model(inputs, {"y": keras.layers.Dense(8, name="after_narrow")(hidden)})  # 16 inputs
    graph = quantizer.quantize_flatbuffer(
        convert_to_tflite(model), quantizer.named_recipe("dynamic_int4_blockwise")
    )
    (fallback,) = graph.recipe[len(quantizer.named_recipe("dynamic_int4_blockwise")) :]
    # One rule, for the second layer only (its scope is its output tensor's name).
    assert fallback["operation"] == "FULLY_CONNECTED" and fallback["regex"].startswith("^")
    assert fallback["op_config"]["weight_tensor_config"]["granularity"] == "CHANNELWISE"
    assert fallback["op_config"]["weight_tensor_config"]["num_bits"] == 4
    x = np.random.default_rng(0).normal(size=(4, 64)).astype("float32")
    from ai_edge_litert.interpreter import Interpreter

    out = Interpreter(model_content=graph.flatbuffer).get_signature_runner("serving_default")(x=x)["y"]
    reference = keras.ops.convert_to_numpy(model(x)["y"])
    assert np.abs(out - reference).max() <= 0.2 * np.abs(reference).max()  # int4 weights, int8 inputs


@needs_tf
def test_a_repaired_graph_keeps_weights_stored_after_the_flatbuffer():
    """Over 256 KB of weights the quantizer stores them after the flatbuffer;
    the signature repair (a static graph's float32 output) must keep them."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_dmpo.export.tflite_convert import convert_to_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((512,), name="x")
    model = keras.Model(inputs, {"y": keras.layers.Dense(640)(inputs)})  # 327,680 int8 weights
    x = np.random.default_rng(0).normal(size=(40, 512)).astype("float32")
    graph = quantizer.quantize_flatbuffer(
        convert_to_tflite(model), quantizer.named_recipe("static_int8"), x[:32]
    )
    runner = Interpreter(model_content=graph.flatbuffer).get_signature_runner("serving_default")
    assert runner.get_output_details()["y"]["shape_signature"][0] == -1
    reference = keras.ops.convert_to_numpy(model(x[32:])["y"])
    assert np.abs(runner(x=x[32:])["y"] - reference).max() <= 0.05 * np.abs(reference).max()


@needs_tf
def test_the_report_sees_every_layer_norm_op(stage_models, calibration_images, test_images):
    from keras_dmpo.export import quantization_report as report
    from keras_dmpo.export.tflite_convert import convert_to_tflite

    graph = convert_to_tflite(stage_models[0])
    counts = report.op_type_counts(graph)
    groups = {"LayerNorm (scope)": ("*", quantizer.LAYER_NORM_SCOPE), "SOFTMAX": ("SOFTMAX", ".*")}
    rows = {
        r["group"]: r
        for r in report.op_type_sensitivity(graph, calibration_images, test_images[1], groups=groups)
    }
    # Keras' LayerNormalization lowers to 10 ops around one RSQRT (mean, variance, normalise, scale, shift).
    assert rows["LayerNorm (scope)"]["ops"] == 10 * counts["RSQRT"] and rows["LayerNorm (scope)"]["quantized"]
    assert rows["SOFTMAX"]["ops"] == counts["SOFTMAX"]
    assert 0 <= rows["SOFTMAX"]["same_label"] <= 1 and "tokens_snr_db" in rows["SOFTMAX"]


@needs_tf
def test_the_delegation_report_finds_what_xnnpack_leaves_to_litert(
    stage_models, cached_conversion, calibration_images, tmp_path
):
    from keras_dmpo.export import quantization_report as report
    from keras_dmpo.export.tflite_convert import convert_to_tflite

    float_graph = convert_to_tflite(stage_models[0])
    counts = report.op_type_counts(float_graph)
    # XNNPACK takes every float op that computes (what it leaves are the
    # dynamic batch's shape computations).
    at_one = report.xnnpack_delegation(float_graph, batch_size=1)
    assert at_one["delegated"] + at_one["not_delegated"] == sum(counts.values())
    for op in ("FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "GELU", "RSQRT"):
        if op in counts:
            assert at_one["by_op"][op] == {"delegated": counts[op], "not_delegated": 0}
    export_stage_graphs(
        str(tmp_path / "s"),
        stage_models,
        SPEC,
        quantization="static_int8",
        representative_data=calibration_images,
    )
    with open(tmp_path / "s" / "stage_1.tflite", "rb") as handle:
        int8 = report.xnnpack_delegation(handle.read(), batch_size=1)
    # Measured with ai-edge-litert 2.3.0: the int8 attention products (two
    # activations) are LiteRT kernels, and the graph falls apart into more
    # partitions than the float one.
    assert int8["by_op"]["BATCH_MATMUL"]["not_delegated"] == counts["BATCH_MATMUL"]
    assert int8["by_op"]["FULLY_CONNECTED"]["delegated"] > 0
    assert int8["partitions"] > at_one["partitions"]


# -- the recipe in the manifest (schema, numpy only) --------------------------


@needs_tf
def test_the_schema_reads_recipes_and_old_manifests(stage_models, cached_conversion, tmp_path):
    manifest = export_stage_graphs(str(tmp_path / "w"), stage_models, SPEC, quantization="weight_only_int8")
    validate_manifest(manifest)
    old = {k: v for k, v in manifest.items() if k not in ("quantization_recipe", "quantization_tool")}
    validate_manifest({**old, "quantization": "dynamic"})  # a converter export, as written before
    bad = [
        ({**old}, r"manifest\['quantization_recipe'\] must be a non-empty list of recipe rules"),
        (
            {**manifest, "quantization": "int8"},
            r"manifest\['quantization_recipe'\] must be null or absent \(quantization 'int8' is the converter's",
        ),
        (
            {**manifest, "quantization": "int4"},
            r"manifest\['quantization'\] must be one of \[None, 'dynamic'",
        ),
        (
            {**manifest, "quantization_recipe": [{"regex": ".*", "operation": "*"}]},
            r"manifest\['quantization_recipe'\]\[0\] lacks the required key 'algorithm_key'",
        ),
    ]
    for value, message in bad:
        with pytest.raises(ValueError, match=message):
            validate_manifest(json.loads(json.dumps(value)))


# -- argument checks (before any conversion: every backend) -------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"quantization": "int4"},
            r"`quantization` must be one of \(None, 'dynamic', 'float16', 'int8', 'weight_only_int8', .*'int8_matmuls'\) "
            r"or a LiteRT quantizer recipe .*got 'int4'",
        ),
        (
            {"quantization": "static_int8"},
            r"`quantization='static_int8'` needs `representative_data`.*got None",
        ),
        (
            {
                "quantization": "mixed",
                "representative_data": np.zeros((MIN_CALIBRATION_IMAGES - 1, 32, 32, 3)),
            },
            r"`representative_data` has 31 images; `quantization='mixed'` needs at least 32 \(each activation "
            r"range is the min and max over these images",
        ),
        (
            {"quantization": [{"regex": ".*", "operation": "FC", "algorithm_key": "no_quantize"}]},
            r"`quantization\[0\]\['operation'\]` must be '\*' or a LiteRT op name such as 'FULLY_CONNECTED'; got 'FC'",
        ),
        (
            {"quantization": [{"regex": "(", "operation": "*", "algorithm_key": "no_quantize"}]},
            r"`quantization\[0\]\['regex'\]` must be a Python regular expression; got '\('",
        ),
        (
            {
                "quantization": [
                    {"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize"}
                ]
            },
            r"`quantization\[0\]\['op_config'\]` must be a dict \(the precision\) unless the rule is 'no_quantize'",
        ),
        ({"quantization": []}, r"`quantization` as a recipe must be a non-empty list of rule dicts"),
    ],
)
def test_bad_arguments_name_the_argument(stage_models, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        export_stage_graphs(str(tmp_path / "out"), stage_models, SPEC, **change)
    assert not os.path.exists(tmp_path / "out")


def test_a_bad_rule_the_quantizer_refuses_is_named():
    rule = {"regex": ".*", "operation": "FULLY_CONNECTED", "algorithm_key": "min_max_uniform_quantize"}
    with pytest.raises(ValueError, match=r"`quantization\[1\]` is refused by the LiteRT quantizer"):
        resolve_quantization([quantizer.named_recipe("dynamic_int8")[0], {**rule, "op_config": {"x": 1}}])


def test_named_recipes_are_json_and_say_what_they_calibrate():
    for name in QUANTIZER_RECIPES:
        mode = resolve_quantization(name)
        assert json.loads(json.dumps(mode.recipe)) == mode.recipe
        assert mode.needs_calibration == name.startswith(("static", "mixed", "int8_matmuls"))
    mixed = quantizer.named_recipe("mixed")
    kept = {(r["operation"], r["regex"]) for r in mixed if r["algorithm_key"] == "no_quantize"}
    assert {("SOFTMAX", ".*"), ("GELU", ".*"), ("RSQRT", ".*"), ("*", quantizer.LAYER_NORM_SCOPE)} <= kept


@pytest.mark.parametrize(
    "scope, layer_norm",
    [
        ("stage_1_1/transformer_block_1_1/ln_1_1/Rsqrt;", True),  # keras-hub ViT
        ("stage_1_1/layers_0_1/norm1_1/moments/mean;", True),  # DINOv2
        ("stage_2_1/layernorm_1/add_2;", True),
        ("stage_1_1/exit_1_head_1/covariance_pooling_1/layer_norm_1/mul;", True),
        ("stage_1_1/head_1_norm_1/Rsqrt;", True),
        ("stage_1_1/layers_0_1/mlp_1/fc1_1/Tensordot/MatMul1;", False),
        ("stage_1_1/layers_0_1/layer_scale1_1/Mul;", False),
        ("stage_1_1/exit_1_bypass_1/up_1/Tensordot/MatMul;", False),
    ],
)
def test_the_layer_norm_pattern(scope, layer_norm):
    import re

    assert bool(re.search(quantizer.LAYER_NORM_SCOPE, scope)) == layer_norm


# -- EarlyExitModel.export_tflite: the TF subprocess carries a recipe ---------


@pytest.fixture(scope="module")
def early_exit(tiny_vit_preset):
    from keras_dmpo import DMPOClassifier, EarlyExitModel

    keras.utils.set_random_seed(0)
    model = DMPOClassifier.from_preset(tiny_vit_preset, num_classes=3, exits=[2, 4])
    return EarlyExitModel(model, thresholds=[0.5, 0.0])


def test_the_subprocess_gets_a_custom_recipe_as_a_file(early_exit, tmp_path, monkeypatch):
    from keras_dmpo.inference import stage_export

    recipe = quantizer.named_recipe("weight_only_int8")[:1]
    commands = []

    def fake_run(command, **kwargs):
        path = command[command.index("--quantization-recipe") + 1]
        with open(path) as handle:
            commands.append((command, json.load(handle)))
        return subprocess.CompletedProcess(command, 1, "", "stopped by the test")

    monkeypatch.setattr(subprocess, "run", fake_run)
    mode = resolve_quantization(recipe)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        stage_export._in_tensorflow_subprocess(
            "tflite", early_exit, str(tmp_path / "out"), mode, None, False, None
        )
    ((command, sent),) = commands
    assert "--quantization" not in command and sent == mode.recipe


def test_early_exit_model_exports_mixed(early_exit, tmp_path):
    """The public API on a DMPOClassifier (adapters, bypass, covariance head):
    in-process on TensorFlow, through the TensorFlow subprocess elsewhere.
    (Its stage 1 hands its tokens both to float LayerNorms and out of the
    graph, where the quantizer's signature needed repairing.)"""
    images = np.random.default_rng(0).uniform(size=(MIN_CALIBRATION_IMAGES, 32, 32, 3)).astype("float32")
    manifest = early_exit.export_tflite(
        str(tmp_path / "mixed"), quantization="mixed", representative_data=images
    )
    assert manifest["quantization"] == "mixed"
    assert manifest["quantization_recipe"][:8] == quantizer.named_recipe("mixed")
    runtime = StagedRuntime(str(tmp_path / "mixed"))
    runtime.thresholds = [1.0, 0.0]  # through both stages
    expected = early_exit.exit_probabilities(images[:8])[-1]
    out = runtime.predict(images[:8])
    # Static int8 outside LayerNorm/softmax/GELU/covariance root, 3 classes, untrained: a sanity bound.
    assert np.abs(out["probabilities"] - expected).max() <= 0.3


def test_a_fixed_batch_graph_keeps_its_float_tokens(early_exit, tmp_path):
    """Static int8 on the fully connected layers alone, batch-1 graphs: the
    tokens leave stage 1 and feed its bypass's int8 layer, and the quantizer
    listed their int8 copy as the graph output (LiteRT: "Tensor data is
    null"); quantize_flatbuffer points the output back at the float tokens."""
    images = np.random.default_rng(1).uniform(size=(MIN_CALIBRATION_IMAGES, 32, 32, 3)).astype("float32")
    manifest = early_exit.export_tflite(
        str(tmp_path / "fc"),
        quantization=[quantizer.static_rule(8, operation="FULLY_CONNECTED")],
        representative_data=images,
        web=True,
    )
    assert manifest["quantization"] == "custom"
    runtime = StagedRuntime(str(tmp_path / "fc"))
    runtime.thresholds = [1.0, 0.0]  # through both stages: stage 1's tokens are read
    out = runtime.predict(images[:8])
    assert (out["exit_index"] == 1).all()
    assert np.abs(out["probabilities"] - early_exit.exit_probabilities(images[:8])[-1]).max() <= 0.3
