"""ONNX stage-graph export (TF backend, tf2onnx) and onnxruntime parity."""

import os

import keras
import numpy as np
import pytest
from export_checks import (
    EXITS,
    build_stage_models,
    export_spec,
    keras_exit_probabilities,
    load_manifest,
    raw_images,
)

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="ONNX export converts TensorFlow graphs with tf2onnx: TensorFlow "
    "backend only (EarlyExitModel.export_onnx converts in a TF subprocess).",
)


def test_onnx_stage_graphs_match_keras(tmp_path):
    import onnxruntime

    from keras_dmpo.export.onnx import export_onnx_stage_graphs

    models, _ = build_stage_models()
    images = raw_images(n=6).astype("float32") / 255
    directory = str(tmp_path / "onnx")
    manifest = export_onnx_stage_graphs(directory, models, export_spec(EXITS, [0.5, 0.5, 0.0]))
    assert manifest["format"] == "onnx" and manifest["format_version"] == 2
    assert manifest["policy"]["thresholds"] == [0.5, 0.5, 0.0]
    assert sorted(os.listdir(directory)) == ["manifest.json", "stage_1.onnx", "stage_2.onnx", "stage_3.onnx"]
    assert load_manifest(directory) == manifest
    assert manifest["stages"][1]["inputs"] == [{"name": "tokens", "shape": [-1, 17, 32], "dtype": "float32"}]
    reference = keras_exit_probabilities(models, images)
    feed = {"images": images}
    worst = 0.0
    for k, stage in enumerate(manifest["stages"]):
        session = onnxruntime.InferenceSession(
            os.path.join(directory, stage["file"]), providers=["CPUExecutionProvider"]
        )
        # The dangling position-ids input is gone: only the real input is left.
        assert [i.name for i in session.get_inputs()] == [stage["inputs"][0]["name"]]
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, feed)))
        worst = max(worst, float(np.abs(outputs["probabilities"] - reference[k]).max()))
        if "next_tokens" in outputs:
            feed = {"tokens": outputs["next_tokens"]}
    print(f"onnxruntime vs Keras max |p diff| over the stages: {worst:.2e}")
    assert worst <= 1e-4


def test_erfc_is_rewritten():
    """Exact GELU gives TF Erfc, which onnxruntime rejects; we emit 1 - Erf."""
    from keras_dmpo.export.onnx import convert_to_onnx

    inputs = keras.Input((4,), name="images")
    outputs = {
        "probabilities": keras.layers.Activation(lambda x: keras.activations.gelu(x, approximate=False))(
            inputs
        )
    }
    proto = convert_to_onnx(keras.Model(inputs, outputs))
    op_types = {node.op_type for node in proto.graph.node}
    assert "Erf" in op_types and "Erfc" not in op_types

    import onnxruntime

    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.linspace(-3, 3, 8, dtype="float32").reshape(2, 4)
    expected = keras.ops.convert_to_numpy(keras.activations.gelu(x, approximate=False))
    np.testing.assert_allclose(session.run(None, {"images": x})[0], expected, atol=1e-6)
