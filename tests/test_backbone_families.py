"""keras-hub DeiT and DINOv2 backbones beside ViT, on every backend.

Tiny random backbones go through ``save_to_preset`` / ``from_preset(dir)``;
their stage split must reproduce the backbone, the token layout must come
from the backbone, and a DMPO model on them must train, calibrate and export
builtins-only TFLite stage graphs whose LiteRT answers equal Keras'.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import build_tiny_backbone

from keras_dmpo import DMPOClassifier, EarlyExitModel, PhaseCallback, PhaseSchedule
from keras_dmpo.litert import StagedRuntime
from keras_dmpo.models.backbone_families import SUPPORTED_BACKBONES
from keras_dmpo.models.vit_stages import ViTStages, load_vit_backbone
from keras_dmpo.policy import rule as exit_rule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
FAMILIES = ("deit", "dinov2")
# (prefix tokens, grid) of the tiny presets: DeiT has class + distillation
# tokens; the tiny DINOv2 has a class token and 2 registers.
LAYOUT = {"deit": (2, (4, 4)), "dinov2": (3, (4, 4))}


def _backbone_output(backbone, images):
    inputs = {"images": images} if type(backbone).__name__ == "DINOV2Backbone" else images
    return keras.ops.convert_to_numpy(backbone(inputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_preset_round_trip_and_stages_equal_backbone(family, family_presets, images):
    backbone = load_vit_backbone(family_presets[family])
    reference = build_tiny_backbone(family)
    np.testing.assert_allclose(
        _backbone_output(backbone, images), _backbone_output(reference, images), atol=1e-6
    )
    stages = ViTStages(backbone, exits=[1, 3])
    prefix, grid = LAYOUT[family]
    assert (stages.family, stages.num_prefix_tokens, stages.grid_shape) == (family, prefix, grid)
    assert stages.num_tokens == prefix + 16
    tokens = stages.tokens_model(images)
    assert [tuple(t.shape) for t in tokens.values()] == [(3, prefix + 16, 32)] * 3
    diff = np.abs(keras.ops.convert_to_numpy(tokens["exit_3"]) - _backbone_output(backbone, images))
    print(f"[{BACKEND}] {family} stages vs backbone max |diff|: {diff.max():.2e}")
    assert diff.max() <= 1e-5


def test_unsupported_backbone_lists_the_supported_ones():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError) as error:
        ViTStages(model)
    for name in SUPPORTED_BACKBONES:
        assert name in str(error.value)
    assert "Sequential" in str(error.value)


def test_image_shape_only_where_the_family_interpolates(family_presets, tiny_vit_preset):
    backbone = load_vit_backbone(family_presets["dinov2"], image_shape=(48, 48, 3))
    assert tuple(backbone.get_config()["image_shape"]) == (48, 48, 3)
    assert ViTStages(backbone).grid_shape == (6, 6)
    with pytest.raises(ValueError, match="image_shape"):
        load_vit_backbone(tiny_vit_preset, image_shape=(48, 48, 3))
    with pytest.raises(ValueError, match="image_shape"):
        load_vit_backbone(family_presets["dinov2"], image_shape=(48, 48))


def test_layers_read_the_token_layout_from_the_backbone(family_presets):
    model = DMPOClassifier.from_preset(family_presets["dinov2"], num_classes=3, exits=[1, 2])
    assert model.input_normalization == "imagenet"  # a DINOv2 default
    bypass = model.exit_bypasses[0]
    head = model.exit_heads[0]
    assert (bypass.num_prefix_tokens, tuple(bypass.grid_shape)) == (3, (4, 4))
    assert head.num_prefix_tokens == 3 and head.pooling.num_prefix_tokens == 3
    plain = DMPOClassifier.from_preset(
        family_presets["deit"], num_classes=3, exits=[1, 2], input_normalization=None
    )
    assert plain.exit_heads[0].num_prefix_tokens == 2 and plain.input_normalization is None


def test_input_normalization_is_applied_and_checked(family_presets, images):
    backbone = load_vit_backbone(family_presets["dinov2"])
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    model = DMPOClassifier(backbone=backbone, num_classes=3, exits=[2], input_normalization="imagenet")
    tokens = keras.ops.convert_to_numpy(model.stage_plan.embed(images))
    expected = keras.ops.convert_to_numpy(model.stages.embed(((images - mean) / std).astype("float32")))
    np.testing.assert_allclose(tokens, expected, atol=1e-5)
    for bad, match in (
        ("cifar", "input_normalization"),
        ({"mean": [0.5, 0.5], "std": [1, 1, 1]}, r"input_normalization\['mean'\]"),
        ({"mean": 0.5, "std": 0.0}, r"input_normalization\['std'\]"),
    ):
        with pytest.raises(ValueError, match=match):
            DMPOClassifier(backbone=backbone, num_classes=3, input_normalization=bad)


@pytest.fixture(scope="module", params=FAMILIES)
def trained_family(request, family_presets):
    """A DMPO model on a tiny DeiT / DINOv2 preset after one training epoch,
    with thresholds at the median exit scores so every exit answers."""
    family = request.param
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(48, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=48)
    keras.utils.set_random_seed(2)
    model = DMPOClassifier.from_preset(family_presets[family], num_classes=3, exits=[1, 2, 3])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    before = [w.copy() for w in model.get_weights()]
    model.fit(
        x[:32],
        y[:32],
        batch_size=16,
        epochs=1,
        verbose=0,
        callbacks=[PhaseCallback(PhaseSchedule(), verbose=0)],
    )
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    ee = EarlyExitModel(model)
    record = ee.calibrate(x[32:], y[32:], flops_budget=0.9)
    assert record is not None and len(ee.thresholds) == ee.num_exits
    scores = exit_rule.exit_scores(ee.exit_probabilities(x[32:]), ee.criterion)
    ee.thresholds = [float(np.median(s)) for s in scores[:-1]] + [0.0]
    expected = ee.predict(x[32:])
    assert len(set(expected["exit_index"].tolist())) >= 2
    return family, ee, x[32:], expected


def test_family_tflite_stage_graphs_match_keras(trained_family, tmp_path):
    family, ee, x, expected = trained_family
    manifest = ee.export_tflite(str(tmp_path / "tflite"))
    assert [s["flops"] for s in manifest["stages"]] == pytest.approx(ee.flops_per_exit, rel=1e-12)
    runtime = StagedRuntime(str(tmp_path / "tflite"))
    out = runtime.predict(x)
    np.testing.assert_array_equal(out["exit_index"], expected["exit_index"])
    np.testing.assert_array_equal(out["labels"], expected["labels"])
    diff = float(np.abs(out["probabilities"] - expected["probabilities"]).max())
    print(f"[{BACKEND}] {family} LiteRT vs Keras max |dp|: {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.backend_independent  # XLA counts in a KERAS_BACKEND=jax subprocess
def test_family_flops_match_xla_within_one_percent():
    """Whole DeiT / DINOv2 backbones and DMPO models (every exit; the
    single-exit model) against XLA's cost analysis, in a JAX subprocess."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "flops_check.py"),
            "--family",
            "deit",
            "--family",
            "dinov2",
            "--scale",
            "family_small",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    rows = json.loads(process.stdout.strip().splitlines()[-1])
    assert {r["what"] for r in rows} == {
        f"{f}.{w}" for f in FAMILIES for w in ("backbone", "dmpo_all_exits", "dmpo_single_exit")
    }
    for row in rows:
        assert abs(row["diff_percent"]) < 1.0, row


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="ONNX stage graphs of the families are checked in-process on TensorFlow; "
    "the JAX/torch subprocess path is the one test_early_exit_export.py covers.",
)
def test_family_onnx_stage_graphs_match_keras(trained_family, tmp_path):
    import onnxruntime

    family, ee, x, expected = trained_family
    manifest = ee.export_onnx(str(tmp_path / "onnx"))
    feed, probabilities = {"images": x}, []
    for stage in manifest["stages"]:
        session = onnxruntime.InferenceSession(
            str(tmp_path / "onnx" / stage["file"]), providers=["CPUExecutionProvider"]
        )
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        probabilities.append(outputs["probabilities"])
        if "next_tokens" in outputs:
            feed = {"tokens": outputs["next_tokens"]}
    keras_probabilities = ee.exit_probabilities(x)
    diff = max(float(np.abs(p - k).max()) for p, k in zip(probabilities, keras_probabilities))
    print(f"[{BACKEND}] {family} onnxruntime vs Keras max |dp| over all exits: {diff:.2e}")
    assert diff <= 1e-4


LOAD_ON_ANOTHER_BACKEND = """
import sys
import numpy as np
import keras
from keras_dmpo import DMPOClassifier  # noqa: F401 (registers the classifier)
images = np.load(sys.argv[2])
model = keras.models.load_model(sys.argv[1], compile=False)
np.save(sys.argv[3], keras.ops.convert_to_numpy(model.predict_on_batch(images)["exit_2"]))
"""


def test_dinov2_loads_the_same_on_every_backend(images, tmp_path):
    # Position embeddings of std 1 (a trained DINOv2's are O(1)) on a 6 x 6
    # grid for a 4 x 4 image grid, so that interpolating them two ways
    # shows in the outputs.
    import keras_hub

    source = build_tiny_backbone("dinov2")
    layer = source.embeddings
    layer.position_embeddings.assign(
        np.random.default_rng(0).normal(size=tuple(layer.position_embeddings.shape))
    )
    source.save_to_preset(str(tmp_path / "preset"))
    reference = keras_hub.models.Backbone.from_preset(str(tmp_path / "preset"))
    backbone = load_vit_backbone(str(tmp_path / "preset"))
    config = backbone.get_config()
    assert tuple(config["position_embedding_shape"]) == tuple(config["image_shape"]) == (32, 32, 3)
    assert backbone.count_params() < reference.count_params()  # a 4 x 4 grid, not 6 x 6
    np.testing.assert_allclose(
        _backbone_output(backbone, images), _backbone_output(reference, images), atol=1e-6
    )
    model = DMPOClassifier(backbone=backbone, num_classes=3, exits=[1, 2])
    path, image_path, out_path = (str(tmp_path / n) for n in ("m.keras", "x.npy", "y.npy"))
    model.save(path)
    np.save(image_path, images)
    expected = keras.ops.convert_to_numpy(model.predict_on_batch(images)["exit_2"])
    other = "torch" if BACKEND == "tensorflow" else "tensorflow"  # always another backend
    env = {**os.environ, "KERAS_BACKEND": other}
    subprocess.run(
        [sys.executable, "-c", LOAD_ON_ANOTHER_BACKEND, path, image_path, out_path],
        check=True,
        env=env,
        cwd=ROOT,
    )
    diff = np.abs(np.load(out_path) - expected).max()
    print(f"[{BACKEND}] saved here, loaded on {other}: max |logit diff| {diff:.2e}")
    assert diff <= 1e-4
