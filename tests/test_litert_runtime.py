"""StagedRuntime (keras_dmpo.litert) against the Keras stage models.

The float32 export is made once per process (in a TensorFlow subprocess on
JAX/torch), so these tests run on every backend.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from export_checks import float_export

from keras_dmpo.litert import StagedRuntime
from keras_dmpo.policy import rule as exit_rule
from keras_dmpo.policy.rule import exit_scores


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return float_export(tmp_path_factory)


def _reference(reference, thresholds, criterion="confidence"):
    probabilities = [reference[f"exit_{k}"] for k in (1, 2, 3)]
    exit_index = exit_rule.assign_exits(exit_scores(np.stack(probabilities), criterion), thresholds)
    chosen = np.stack(probabilities)[exit_index, np.arange(len(exit_index))]
    return exit_index, chosen


@pytest.mark.parametrize("batch_size", [None, 1, 5])
def test_matches_keras_early_exit(exported, batch_size):
    directory, reference = exported
    runtime = StagedRuntime(directory)
    out = runtime.predict(reference["images"], batch_size=batch_size)
    exit_index, probabilities = _reference(reference, runtime.thresholds)
    # The thresholds were chosen so that every exit answers some images.
    assert sorted(set(exit_index.tolist())) == [0, 1, 2]
    np.testing.assert_array_equal(out["exit_index"], exit_index)
    diff = np.abs(out["probabilities"] - probabilities).max()
    print(f"LiteRT vs Keras max |diff| (batch_size={batch_size}): {diff:.2e}")
    assert diff <= 1e-4
    np.testing.assert_array_equal(out["labels"], probabilities.argmax(-1))
    np.testing.assert_array_equal(out["flops"], runtime.flops_per_exit[exit_index])
    assert out["probabilities"].shape == (len(exit_index), 5)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_every_exit_on_every_image_matches_keras(exported, web_exported, batch_size):
    for directory, reference in (exported, web_exported):
        runtime = StagedRuntime(directory)
        probabilities = runtime.exit_probabilities(reference["images"], batch_size=batch_size)
        keras_probabilities = np.stack([reference[f"exit_{k}"] for k in (1, 2, 3)])
        assert probabilities.shape == keras_probabilities.shape
        assert np.abs(probabilities - keras_probabilities).max() <= 1e-4
        # The policy applied to them picks the exits the staged run picks.
        np.testing.assert_array_equal(
            runtime.policy.assign(probabilities), runtime.predict(reference["images"])["exit_index"]
        )
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1 or None; got 0"):
        runtime.exit_probabilities(reference["images"], batch_size=0)


def test_monolithic_and_float_input(exported):
    directory, reference = exported
    runtime = StagedRuntime(directory)
    mono = runtime.predict_monolithic(reference["images"])
    assert np.abs(mono["probabilities"] - reference["monolithic"]).max() <= 1e-4
    # Float pixels in the raw range give the same answer as uint8 ones.
    as_float = runtime.predict(reference["images"].astype("float64"))
    as_uint8 = runtime.predict(reference["images"])
    np.testing.assert_allclose(as_float["probabilities"], as_uint8["probabilities"], atol=1e-6)


def test_stages_load_lazily_and_thresholds_override(exported):
    directory, reference = exported
    runtime = StagedRuntime(directory, thresholds=[0.0, 0.0, 0.0])
    assert not any(stage.loaded for stage in runtime._stages)
    out = runtime.predict(reference["images"][:3])
    np.testing.assert_array_equal(out["exit_index"], [0, 0, 0])
    # Everything left at stage 1: the deeper stages were never loaded.
    assert [stage.loaded for stage in runtime._stages] == [True, False, False]
    runtime.thresholds = [1.0, 1.0, 1.0]
    out = runtime.predict(reference["images"][:3], batch_size=1)
    # Scores of 1.0 exactly are rare; the last exit answers the rest.
    assert (out["exit_index"] == 2).sum() >= 2
    with pytest.raises(ValueError, match=r"`thresholds` has 1 values; expected 3 \(one per exit"):
        runtime.thresholds = [0.5]
    with pytest.raises(ValueError, match=r"`thresholds` must be in \[0, 1\].*nan"):
        runtime.thresholds = [float("nan"), 0.5, 0.0]


def test_entropy_criterion(exported, tmp_path):
    directory, reference = exported
    copy = str(tmp_path / "entropy")
    shutil.copytree(directory, copy)
    manifest_path = os.path.join(copy, "manifest.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    manifest["policy"]["criterion"] = "entropy"
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    scores = exit_scores(reference["exit_1"], "entropy")
    assert np.all((scores >= 0) & (scores <= 1 + 1e-12))
    ordered = np.sort(scores)
    thresholds = [float(ordered[len(ordered) // 2 : len(ordered) // 2 + 2].mean()), 0.5, 0.0]
    runtime = StagedRuntime(copy, thresholds=thresholds)
    out = runtime.predict(reference["images"], batch_size=4)
    exit_index, probabilities = _reference(reference, thresholds, "entropy")
    np.testing.assert_array_equal(out["exit_index"], exit_index)
    assert np.abs(out["probabilities"] - probabilities).max() <= 1e-4
    # Uniform -> 0, one-hot -> 1.
    np.testing.assert_allclose(exit_scores(np.array([[0.25] * 4, [1, 0, 0, 0]]), "entropy"), [0, 1])


def test_stage_latency(exported):
    directory, _ = exported
    timings = StagedRuntime(directory, num_threads=1).stage_latency(repeats=3, warmup=1)
    assert sorted(timings) == ["monolithic", "stage_1", "stage_2", "stage_3"]
    assert all(t > 0 for t in timings.values())


# -- bad input ---------------------------------------------------------------


@pytest.fixture
def broken(exported, tmp_path):
    """A private copy of the export to damage."""
    copy = str(tmp_path / "copy")
    shutil.copytree(exported[0], copy)
    return copy


def _edit_manifest(directory, **changes):
    path = os.path.join(directory, "manifest.json")
    with open(path) as handle:
        manifest = json.load(handle)
    manifest.update(changes)
    with open(path, "w") as handle:
        json.dump(manifest, handle)


def test_missing_directory_and_manifest(broken, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StagedRuntime(str(tmp_path / "nowhere"))
    os.remove(os.path.join(broken, "manifest.json"))
    with pytest.raises(FileNotFoundError, match=r"No manifest.json in .*copy"):
        StagedRuntime(broken)


def test_corrupt_manifest(broken):
    with open(os.path.join(broken, "manifest.json"), "w") as handle:
        handle.write('{"format_version": 1, "stages": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        StagedRuntime(broken)


def test_unknown_format_version(broken):
    _edit_manifest(broken, format_version=99)
    with pytest.raises(ValueError, match=r"format_version=99.*supports format_version \[1, 2\]"):
        StagedRuntime(broken)


def test_missing_stage_file(broken):
    os.remove(os.path.join(broken, "stage_2.tflite"))
    with pytest.raises(FileNotFoundError, match="'stage_2.tflite'.*missing"):
        StagedRuntime(broken)


def test_wrong_hash(broken):
    path = os.path.join(broken, "stage_3.tflite")
    with open(path, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256 mismatch for 'stage_3.tflite'"):
        StagedRuntime(broken)
    StagedRuntime(broken, verify_hashes=False)  # the check can be turned off


def test_wrong_image_shape_and_dtype(exported):
    directory, reference = exported
    runtime = StagedRuntime(directory)
    images = reference["images"]
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\).*got \(32, 32, 3\)"):
        runtime.predict(images[0])
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\).*got \(24, 28, 28, 3\)"):
        runtime.predict(images[:, :28, :28])
    with pytest.raises(
        ValueError, match=r"dtype must be one of \['float32', 'float64', 'uint8'\]; got int32"
    ):
        runtime.predict(images.astype("int32"))


def test_uint8_refused_for_unit_range(broken, exported):
    preprocessing = dict(json.load(open(os.path.join(broken, "manifest.json")))["preprocessing"])
    preprocessing.update(input_range=[0.0, 1.0], scale=1.0)
    _edit_manifest(broken, preprocessing=preprocessing)
    runtime = StagedRuntime(broken)
    with pytest.raises(ValueError, match=r"uint8 is accepted only when .*\[0, 255\]"):
        runtime.predict(exported[1]["images"])


def test_import_is_light_and_predicts_without_keras(exported):
    """`import keras_dmpo.litert` and a prediction never load Keras or TF."""
    directory, reference = exported
    code = (
        "import sys, numpy as np\n"
        "import keras_dmpo.litert as litert\n"
        f"out = litert.StagedRuntime({directory!r}).predict(np.zeros((2, 32, 32, 3), 'uint8'))\n"
        "assert out['probabilities'].shape == (2, 5)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('keras', 'keras_hub', 'tensorflow', 'tf_keras', 'jax', 'torch'))\n"
        "print(heavy)\n"
        "assert not heavy, heavy\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=root),
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- non-finite and out-of-range pixels ----------------------------------------


def test_non_finite_pixels_are_refused_with_their_indices(exported):
    directory, reference = exported
    runtime = StagedRuntime(directory)
    images = reference["images"][:8].astype("float32")
    images[2, 0, 0, 0] = np.nan
    images[5, 3, 3, 1] = np.inf
    images[7, 1, 1, 2] = -np.inf
    message = (
        r"`images` has NaN or inf pixel values in 3 of 8 samples \(indices \[2, 5, 7\]\)"
        r".*allow_non_finite=True"
    )
    for batch_size in (None, 1, 3):
        with pytest.raises(ValueError, match=message):
            runtime.predict(images, batch_size=batch_size)
    with pytest.raises(ValueError, match=message):
        runtime.predict_monolithic(images)
    with pytest.raises(ValueError, match=r"in 8 of 8 samples \(indices \[0, 1, 2, 3, 4\] and 3 more\)"):
        runtime.predict(np.full_like(images, np.nan))
    # Finite float64 pixels that overflow float32 are caught as well.
    huge = images.astype("float64")
    huge[:] = 1.0
    huge[4, 0, 0, 0] = 1e300
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match=r"indices \[4\].*overflow float32"):
        StagedRuntime(directory).predict(huge)
    # Let through on request: the other samples are answered as usual.
    out = runtime.predict(images, allow_non_finite=True)
    clean = [0, 1, 3, 4, 6]
    expected = runtime.predict(images[clean])
    np.testing.assert_allclose(out["probabilities"][clean], expected["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(out["exit_index"][clean], expected["exit_index"])
    assert out["probabilities"].shape == (8, 5)


def test_pixels_far_outside_the_input_range_warn_once(exported, broken):
    import warnings

    directory, reference = exported
    images = reference["images"][:4].astype("float32")  # raw pixels in [0, 255]
    runtime = StagedRuntime(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.predict(images)
        runtime.predict(images - 20.0)  # a little outside: no warning
    with pytest.warns(
        RuntimeWarning,
        match=r"pixel values in \[0, 1020\], far outside the "
        r"manifest's preprocessing\['input_range'\] \[0, 255\]",
    ):
        runtime.predict(images * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.predict(images * 4)  # once per runtime
    # The common mistake: 0-255 pixels for a model that takes [0, 1].
    preprocessing = dict(json.load(open(os.path.join(broken, "manifest.json")))["preprocessing"])
    preprocessing.update(input_range=[0.0, 1.0], scale=1.0)
    _edit_manifest(broken, preprocessing=preprocessing)
    with pytest.warns(RuntimeWarning, match=r"\[0, 1\] of raw pixels"):
        StagedRuntime(broken).predict(images)


@pytest.fixture(scope="module")
def web_exported(tmp_path_factory):
    return float_export(tmp_path_factory, web=True)


def test_web_export_has_batch_one_graphs_that_match_keras(web_exported, exported):
    directory, reference = web_exported
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    graphs = manifest["stages"] + [manifest["monolithic"]]
    assert {spec["shape"][0] for g in graphs for spec in g["inputs"] + g["outputs"]} == {1}
    runtime = StagedRuntime(directory)
    assert runtime.fixed_batch_size == 1 and StagedRuntime(exported[0]).fixed_batch_size is None
    # Any batch_size: a batch-1 bundle runs the images one at a time.
    for batch_size in (None, 5):
        out = runtime.predict(reference["images"], batch_size=batch_size)
        exit_index, probabilities = _reference(reference, runtime.thresholds)
        assert sorted(set(exit_index.tolist())) == [0, 1, 2]
        np.testing.assert_array_equal(out["exit_index"], exit_index)
        assert np.abs(out["probabilities"] - probabilities).max() <= 1e-4
    mono = runtime.predict_monolithic(reference["images"], batch_size=4)
    assert np.abs(mono["probabilities"] - reference["monolithic"]).max() <= 1e-4
    assert set(runtime.stage_latency(batch_size=1, repeats=2, warmup=0)) == {
        "stage_1",
        "stage_2",
        "stage_3",
        "monolithic",
    }
    with pytest.raises(ValueError, match=r"`batch_size` must be 1 for this bundle"):
        runtime.stage_latency(batch_size=4)


def test_a_bundle_mixing_batch_kinds_is_refused(web_exported, tmp_path):
    from keras_dmpo.litert import validate_manifest

    manifest = json.load(open(os.path.join(web_exported[0], "manifest.json")))
    manifest["stages"][1]["outputs"][0]["shape"][0] = -1
    with pytest.raises(
        ValueError, match=r"manifest\['stages'\]\[1\]\['outputs'\]\[0\]\['shape'\]\[0\] must be 1"
    ):
        validate_manifest(manifest)
    for graph in manifest["stages"] + [manifest["monolithic"]]:
        for spec in graph["inputs"] + graph["outputs"]:
            spec["shape"][0] = 8
    with pytest.raises(ValueError, match=r"-1 \(dynamic batch\) or 1 \(web\); got 8"):
        validate_manifest(manifest)
