"""End to end through the public API, on every backend: fit a DMPOClassifier,
wrap it in an EarlyExitModel, ``export_tflite`` / ``export_onnx`` (in-process
on TensorFlow, a ``KERAS_BACKEND=tensorflow`` subprocess on JAX and torch), and
compare LiteRT / onnxruntime with ``EarlyExitModel.predict``.

One TFLite export per test process (module fixture): a conversion costs
seconds, a subprocess export ~20 s more (TensorFlow and keras-hub imports).
"""

import json
import os
import shutil
import subprocess

import keras
import numpy as np
import pytest

from keras_dmpo import DMPOClassifier, EarlyExitModel, PhaseCallback, PhaseSchedule
from keras_dmpo.litert import StagedRuntime
from keras_dmpo.policy import rule as exit_rule

NUM_CLASSES = 3
EXITS = [1, 2, 3]  # on the 4-block tiny ViT: the last block is added (K = 4)
NUM_IMAGES = 24
BACKEND = keras.backend.backend()
# ONNX through the public API: in-process on TensorFlow, a TF subprocess on
# JAX. The torch run would repeat the JAX subprocess path exactly (same
# saved .keras -> TF process -> tf2onnx) for ~30 s more, so it is skipped
# there with this reason.
ONNX_BACKENDS = ("tensorflow", "jax")


def _midpoints(scores):
    """A threshold at the median of the observed scores, placed midway
    between two observed values so that float noise cannot flip an exit."""
    ordered = np.sort(scores)
    i = len(ordered) // 2
    return float((ordered[i - 1] + ordered[i]) / 2)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32 + NUM_IMAGES, 32, 32, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=len(x))
    return (x[:32], y[:32]), x[32:]


@pytest.fixture(scope="module")
def trained(tiny_vit_preset, data):
    """A DMPOClassifier fitted for one short epoch on this backend, wrapped in
    an EarlyExitModel with thresholds at the median exit scores."""
    (x_train, y_train), x = data
    keras.utils.set_random_seed(4)
    model = DMPOClassifier.from_preset(tiny_vit_preset, num_classes=NUM_CLASSES, exits=EXITS)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    before = model.get_weights()
    model.fit(
        x_train,
        y_train,
        batch_size=16,
        epochs=1,
        verbose=0,
        callbacks=[PhaseCallback(PhaseSchedule(), verbose=0)],
    )
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert any(changed), "fit did not change any weight"
    ee = EarlyExitModel(model)
    scores = exit_rule.exit_scores(ee.exit_probabilities(x), ee.criterion)
    ee.thresholds = [_midpoints(s) for s in scores[:-1]] + [0.0]
    expected = ee.predict(x)
    # Every exit answers some images (a real test of the staged loop).
    assert sorted(set(expected["exit_index"].tolist())) == list(range(ee.num_exits))
    return ee, x, expected


@pytest.fixture(scope="module")
def tflite_export(trained, tmp_path_factory):
    ee, _, _ = trained
    directory = str(tmp_path_factory.mktemp("ee_export") / "tflite")
    manifest = ee.export_tflite(directory)
    return directory, manifest


def test_litert_staged_runtime_matches_early_exit_model(trained, tflite_export):
    ee, x, expected = trained
    directory, _ = tflite_export
    runtime = StagedRuntime(directory)
    for batch_size in (None, 1):
        out = runtime.predict(x, batch_size=batch_size)
        np.testing.assert_array_equal(out["exit_index"], expected["exit_index"])
        diff = float(np.abs(out["probabilities"] - expected["probabilities"]).max())
        print(f"[{BACKEND}] LiteRT vs EarlyExitModel max |dp| (batch_size={batch_size}): {diff:.2e}")
        assert diff <= 1e-4
        np.testing.assert_array_equal(out["labels"], expected["labels"])
        np.testing.assert_allclose(out["flops"], expected["flops"])
    mono = runtime.predict_monolithic(x)["probabilities"]
    last = ee.exit_probabilities(x)[-1]
    assert np.abs(mono - last).max() <= 1e-4


def test_manifest_carries_the_early_exit_settings(trained, tflite_export):
    ee, _, _ = trained
    directory, manifest = tflite_export
    assert sorted(os.listdir(directory)) == [
        "manifest.json",
        "monolithic.tflite",
        "stage_1.tflite",
        "stage_2.tflite",
        "stage_3.tflite",
        "stage_4.tflite",
    ]
    assert manifest["format"] == "tflite" and manifest["quantization"] is None
    assert manifest["policy"] == ee.policy.to_dict()
    assert manifest["exits"] == list(ee.exits) == [1, 2, 3, 4]
    assert [s["flops"] for s in manifest["stages"]] == pytest.approx(ee.flops_per_exit, rel=1e-12)
    assert manifest["full_model_flops"] == pytest.approx(ee.full_model_flops, rel=1e-12)
    assert manifest["monolithic"]["flops"] == pytest.approx(ee.full_model_flops, rel=1e-12)
    assert manifest["image_shape"] == [32, 32, 3]
    assert manifest["num_classes"] == NUM_CLASSES
    runtime = StagedRuntime(directory)
    assert runtime.thresholds == ee.thresholds
    np.testing.assert_allclose(runtime.flops_per_exit, ee.flops_per_exit)


@pytest.mark.parametrize(
    "criterion, options",
    [
        ("confidence", {"temperatures": [2.5, 0.7, 1.3, 1.0]}),
        ("entropy", {}),
        ("patience", {"patience": 2, "temperatures": [2.0, 1.0, 1.0, 1.0]}),
    ],
)
def test_litert_equals_keras_for_every_exit_policy(trained, tflite_export, tmp_path, criterion, options):
    """The same stage graphs under each policy: the runtime reads the policy
    from the manifest and answers like EarlyExitModel.predict."""
    ee, x, _ = trained
    policy_ee = EarlyExitModel(ee.model, criterion=criterion, **options)
    if criterion != "patience":
        probabilities = policy_ee.exit_probabilities(x)
        scores = [policy_ee.policy.scores(k, p) for k, p in enumerate(probabilities)]
        policy_ee.thresholds = [_midpoints(s) for s in scores[:-1]] + [0.0]
    expected = policy_ee.predict(x)
    assert len(set(expected["exit_index"].tolist())) >= 2
    directory, _ = tflite_export
    copy = tmp_path / "export"
    shutil.copytree(directory, copy)
    with open(copy / "manifest.json") as handle:
        manifest = json.load(handle)
    manifest.update(
        policy_ee.export_spec().manifest(
            "tflite", num_classes=NUM_CLASSES, quantization=None, created_by="test", stages=manifest["stages"]
        )
    )
    manifest["monolithic"] = None
    with open(copy / "manifest.json", "w") as handle:
        json.dump(manifest, handle)
    runtime = StagedRuntime(str(copy))
    assert (runtime.criterion, runtime.patience) == (criterion, options.get("patience"))
    for batch_size in (None, 1):
        out = runtime.predict(x, batch_size=batch_size)
        np.testing.assert_array_equal(out["exit_index"], expected["exit_index"])
        np.testing.assert_array_equal(out["labels"], expected["labels"])


def test_exported_policy_round_trip(trained, tmp_path):
    """Patience and temperatures go through export_tflite (on JAX and torch:
    .keras settings -> TensorFlow subprocess) into manifest.json."""
    ee, x, _ = trained
    policy_ee = EarlyExitModel(ee.model, criterion="patience", patience=3, temperatures=[1.5, 1.0, 1.0, 1.0])
    manifest = policy_ee.export_tflite(str(tmp_path / "patience"))
    assert manifest["policy"] == policy_ee.policy.to_dict()
    assert (manifest["policy"]["criterion"], manifest["policy"]["patience"]) == ("patience", 3)
    assert manifest["policy"]["temperatures"] == [1.5, 1.0, 1.0, 1.0]
    out = StagedRuntime(str(tmp_path / "patience")).predict(x)
    np.testing.assert_array_equal(out["exit_index"], policy_ee.predict(x)["exit_index"])


@pytest.mark.skipif(
    BACKEND not in ONNX_BACKENDS,
    reason=f"ONNX via the public API is tested on {ONNX_BACKENDS}; on {BACKEND} it "
    "would repeat the JAX subprocess path (save .keras -> TF process -> tf2onnx).",
)
def test_onnx_export_matches_early_exit_model(trained, tmp_path):
    import onnxruntime

    ee, x, expected = trained
    directory = tmp_path / "onnx"
    directory.mkdir()
    (directory / "old.txt").write_text("previous export")
    # A non-empty directory is replaced with overwrite=True (through the
    # subprocess's --overwrite flag off TensorFlow).
    manifest = ee.export_onnx(str(directory), overwrite=True)
    assert manifest["format"] == "onnx"
    assert sorted(os.listdir(directory)) == [
        "manifest.json",
        "monolithic.onnx",
        "stage_1.onnx",
        "stage_2.onnx",
        "stage_3.onnx",
        "stage_4.onnx",
    ]
    assert manifest["policy"] == ee.policy.to_dict()
    assert [s["flops"] for s in manifest["stages"]] == pytest.approx(ee.flops_per_exit, rel=1e-12)
    feed = {"images": x}
    probabilities = []
    for stage in manifest["stages"]:
        session = onnxruntime.InferenceSession(
            str(directory / stage["file"]), providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, feed)))
        probabilities.append(outputs["probabilities"])
        if "next_tokens" in outputs:
            feed = {"tokens": outputs["next_tokens"]}
    exit_index = exit_rule.assign_exits(
        exit_rule.exit_scores(np.stack(probabilities), manifest["policy"]["criterion"]),
        manifest["policy"]["thresholds"],
    )
    np.testing.assert_array_equal(exit_index, expected["exit_index"])
    chosen = np.stack(probabilities)[exit_index, np.arange(len(x))]
    diff = float(np.abs(chosen - expected["probabilities"]).max())
    print(f"[{BACKEND}] onnxruntime vs EarlyExitModel max |dp|: {diff:.2e}")
    assert diff <= 1e-4


def test_export_errors_before_any_work(trained, tmp_path, monkeypatch):
    ee, _, _ = trained

    def no_subprocess(*args, **kwargs):
        raise AssertionError("an export subprocess was started for a bad argument")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    with pytest.raises(ValueError, match="`quantization='int8'` needs `representative_data`"):
        ee.export_tflite(str(tmp_path / "int8"), quantization="int8")
    assert not (tmp_path / "int8").exists()
    with pytest.raises(ValueError, match="`representative_data` must be a non-empty array of shape"):
        ee.export_tflite(
            str(tmp_path / "int8"),
            quantization="int8",
            representative_data=np.zeros((4, 28, 28, 3), "float32"),
        )
    with pytest.raises(ValueError, match="`quantization` must be one of"):
        ee.export_tflite(str(tmp_path / "q"), quantization="int4")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
        ee.export_tflite(str(busy))
    with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
        ee.export_onnx(str(busy))
    assert os.listdir(busy) == ["keep.txt"]
