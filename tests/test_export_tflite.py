"""TFLite stage-graph export: manifest schema, atomicity, argument checks,
builtin-only ops and post-training quantization."""

import hashlib
import os

import keras
import numpy as np
import pytest
from export_checks import (
    EXITS,
    build_stage_models,
    export_spec,
    float_export,
    keras_exit_probabilities,
    load_manifest,
    raw_images,
)

from keras_dmpo.export import tflite as tflite_export
from keras_dmpo.export.tflite import export_stage_graphs

needs_tf = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TFLite conversion runs on the TensorFlow backend; on JAX/torch the "
    "export is exercised through a TensorFlow subprocess (float_export).",
)


@pytest.fixture(scope="module")
def stage_models():
    return build_stage_models()


def test_manifest_schema(tmp_path_factory):
    directory, _ = float_export(tmp_path_factory)
    manifest = load_manifest(directory)
    assert {
        "format",
        "format_version",
        "keras_dmpo_version",
        "created_by",
        "image_shape",
        "preprocessing",
        "class_names",
        "num_classes",
        "quantization",
        "exits",
        "policy",
        "full_model_flops",
        "flops_convention",
        "stages",
        "monolithic",
    } <= set(manifest)
    assert manifest["format"] == "tflite" and manifest["format_version"] == 2
    assert set(manifest["policy"]) == {
        "criterion",
        "num_exits",
        "thresholds",
        "temperatures",
        "patience",
        "calibration",
    }
    assert manifest["flops_convention"] == "multiply-add = 2 FLOPs"
    assert manifest["exits"] == EXITS and manifest["num_classes"] == 5
    assert manifest["quantization"] is None
    assert manifest["preprocessing"]["input_range"] == [0.0, 255.0]
    names = sorted(os.listdir(directory))
    assert names == [
        "manifest.json",
        "monolithic.tflite",
        "stage_1.tflite",
        "stage_2.tflite",
        "stage_3.tflite",
    ]
    previous = 0.0
    for k, stage in enumerate(manifest["stages"]):
        with open(os.path.join(directory, stage["file"]), "rb") as handle:
            payload = handle.read()
        assert stage["sha256"] == hashlib.sha256(payload).hexdigest()
        assert stage["size_bytes"] == len(payload)
        assert stage["exit_block"] == EXITS[k] and stage["index"] == k + 1
        assert "threshold" not in stage  # the policy is stored once, in manifest["policy"]
        assert stage["stage_flops"] == pytest.approx(stage["flops"] - previous)
        previous = stage["flops"]
        expected_in = "images" if k == 0 else "tokens"
        assert [t["name"] for t in stage["inputs"]] == [expected_in]
        shape = [-1, 32, 32, 3] if k == 0 else [-1, 17, 32]
        assert stage["inputs"][0] == {"name": expected_in, "shape": shape, "dtype": "float32"}
        outputs = {t["name"]: t for t in stage["outputs"]}
        assert outputs["probabilities"]["shape"] == [-1, 5]
        assert ("tokens" in outputs) == (k < 2)
    assert manifest["monolithic"]["file"] == "monolithic.tflite"
    assert manifest["monolithic"]["flops"] == manifest["full_model_flops"]


# -- argument checks (fail before any conversion, so on every backend) -------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"thresholds": [0.5, 0.5]}, r"`thresholds` has 2 values; expected 3 \(one per exit"),
        ({"thresholds": [0.5, 1.5, 0.0]}, r"`thresholds` must be in \[0, 1\] \(scores are\); got \[1.5\]"),
        (
            {"thresholds": [float("nan"), 0.5, 0.0]},
            r"`thresholds` must be in \[0, 1\] \(scores are\); got \[nan\]",
        ),
        (
            {"criterion": "margin"},
            r"`criterion` must be one of \('confidence', 'entropy', 'patience'\); got 'margin'",
        ),
        ({"exits": [1, 3, 3]}, r"`exits` must be increasing 1-based block numbers"),
        ({"flops_per_exit": [3.0, 2.0, 1.0]}, r"`flops_per_exit` must be 3 positive, non-decreasing"),
        ({"full_model_flops": -1}, r"`full_model_flops` must be a positive number; got -1"),
        (
            {"preprocessing": {"scale": [1.0, 2.0]}},
            r"`preprocessing\['scale'\]` must be a number or 3 numbers",
        ),
        (
            {"preprocessing": {"resize": [64, 64]}},
            r"`preprocessing\['resize'\]` must be the model's image size \[32, 32\]",
        ),
        ({"extra": {"x": object()}}, r"`extra` must be JSON-serialisable"),
    ],
)
def test_bad_spec(change, message):
    arguments = {"exits": EXITS, "thresholds": [0.5, 0.5, 0.0], **change}
    with pytest.raises(ValueError, match=message):
        export_spec(**arguments)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"quantization": "int4"},
            r"`quantization` must be one of \(None, 'dynamic', 'float16', 'int8', .*\) or a LiteRT "
            r"quantizer recipe .*got 'int4'",
        ),
        ({"quantization": "int8"}, r"`quantization='int8'` needs `representative_data`.*got None"),
        (
            {"quantization": "int8", "representative_data": np.zeros((4, 28, 28, 3))},
            r"`representative_data` must be a non-empty array of shape \(N, 32, 32, 3\)",
        ),
    ],
)
def test_bad_arguments(stage_models, tmp_path, change, message):
    models, _ = stage_models
    with pytest.raises(ValueError, match=message):
        export_stage_graphs(str(tmp_path / "out"), models, export_spec(EXITS, [0.5, 0.5, 0.0]), **change)
    assert not os.path.exists(tmp_path / "out")


def test_spec_and_models_must_agree(stage_models, tmp_path):
    models, _ = stage_models
    with pytest.raises(ValueError, match=r"`stage_models` has 2 models; the export spec has 3 exits"):
        export_stage_graphs(str(tmp_path / "out"), models[:2], export_spec(EXITS, [0.5, 0.5, 0.0]))


def test_wrong_stage_interface(stage_models, tmp_path):
    models, monolithic = stage_models
    with pytest.raises(
        ValueError,
        match=r"`stage_models\[1\]` must take one input named 'tokens'; it has inputs \['images'\]",
    ):
        export_stage_graphs(
            str(tmp_path / "out"), [models[0], monolithic, models[2]], export_spec(EXITS, [0.5, 0.5, 0.0])
        )
    with pytest.raises(
        ValueError, match=r"`stage_models\[2\]` must return a dict with keys \['probabilities'\]"
    ):
        export_stage_graphs(
            str(tmp_path / "out"), [models[0], models[1], models[1]], export_spec(EXITS, [0.5, 0.5, 0.0])
        )


def test_non_empty_directory_is_refused(stage_models, tmp_path):
    models, _ = stage_models
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"taken.* is not empty; pass overwrite=True"):
        export_stage_graphs(str(target), models, export_spec(EXITS, [0.5, 0.5, 0.0]))
    assert (target / "notes.txt").read_text() == "mine"


# -- conversion ---------------------------------------------------------------


@needs_tf
def test_failed_export_leaves_nothing(stage_models, tmp_path, monkeypatch):
    models, _ = stage_models
    calls = []
    fail_at = [2]  # stage 2 fails after stage 1 was written
    real_convert = tflite_export.convert_to_tflite

    def failing_convert(model, **kwargs):
        calls.append(model.name)
        if len(calls) == fail_at[0]:
            raise RuntimeError("simulated conversion failure of stage 2")
        return real_convert(model, **kwargs)

    monkeypatch.setattr(tflite_export, "convert_to_tflite", failing_convert)
    spec = export_spec(EXITS, [0.5, 0.5, 0.0])
    with pytest.raises(RuntimeError, match="simulated conversion failure"):
        export_stage_graphs(str(tmp_path / "out"), models, spec)
    assert os.listdir(tmp_path) == []  # no target, no leftover staging dir

    # With overwrite=True a failure keeps the previous export untouched.
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "manifest.json").write_text("{}")
    calls.clear()
    fail_at[0] = 1
    with pytest.raises(RuntimeError, match="simulated conversion failure"):
        export_stage_graphs(str(previous), models, spec, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["previous"]
    assert (previous / "manifest.json").read_text() == "{}"


def test_custom_ops_are_rejected():
    import tensorflow as tf

    from keras_dmpo.export.tflite_convert import check_builtin_ops, non_builtin_ops

    @tf.function(input_signature=[tf.TensorSpec([4, 4], tf.float32)])
    def svd(x):
        return tf.linalg.svd(x, compute_uv=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([svd.get_concrete_function()], svd)
    # Svd has neither a builtin nor a Flex kernel; allow_custom_ops stores it
    # as a CUSTOM op, the same operator code Flex ops get.
    converter.allow_custom_ops = True
    flatbuffer = converter.convert()
    assert non_builtin_ops(flatbuffer) == ["Svd"]
    with pytest.raises(RuntimeError, match=r"non-builtin ops \['Svd'\]"):
        check_builtin_ops(flatbuffer, what="svd")


@needs_tf
@pytest.mark.parametrize("quantization", ["dynamic", "float16", "int8"])
def test_quantized_exports(tmp_path, quantization):
    from keras_dmpo.litert import StagedRuntime

    # int8 uses two stages (stage 2 is calibrated on Keras stage-1 tokens);
    # the others a single stage (the K == 1 path), to keep conversions few.
    exits = [2, 4] if quantization == "int8" else [4]
    models, _ = build_stage_models(exits=exits)
    images = raw_images(n=32, seed=1)
    model_images = images.astype("float32") / 255
    calibration = raw_images(n=16, seed=2).astype("float32") / 255
    manifest = export_stage_graphs(
        str(tmp_path / quantization),
        models,
        export_spec(exits, [0.0] * len(exits)),
        quantization=quantization,
        representative_data=calibration,
    )
    assert manifest["quantization"] == quantization
    runtime = StagedRuntime(str(tmp_path / quantization))
    keras_probabilities = keras_exit_probabilities(models, model_images)
    for k, reference in enumerate(keras_probabilities):
        # thresholds 0 / 1 force every image to exit k
        runtime.thresholds = [0.0] * len(exits) if k == 0 else [1.0, 0.0]
        out = runtime.predict(images)
        agreement = float(np.mean(out["labels"] == reference.argmax(-1)))
        diff = float(np.abs(out["probabilities"] - reference).max())
        print(
            f"{quantization} exit {k + 1}: argmax agreement {agreement:.3f}, "
            f"max |p diff| {diff:.3g}, sizes "
            f"{[s['size_bytes'] for s in manifest['stages']]}"
        )
        assert agreement >= 0.5  # a sanity floor; docs/export.md reports the numbers
