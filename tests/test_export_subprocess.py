"""The TensorFlow export subprocess (``python -m keras_dmpo.export``) on a
model trained on this backend: it loads the ``.keras`` file without its
compile state and never imports JAX or torch.

A model trained on torch saves its optimizer as torch's AdamW
(``keras.src.backend.torch.optimizers``); loading that compile config in the
TensorFlow process would import torch next to TensorFlow, which crashes with
some torch builds. TensorFlow itself imports JAX when it is installed.

The subprocess runs through a small wrapper (``python -c``, the same argv and
environment as ``-m keras_dmpo.export``) that writes ``sorted(sys.modules)``
to a file when the export ends. On JAX and torch the public
``export_tflite`` takes that path; on TensorFlow it converts in-process, so
the test calls the subprocess path directly.
"""

import json
import subprocess
import zipfile

import keras
import numpy as np
import pytest

from keras_dmpo import DMPOClassifier, EarlyExitModel, PhaseCallback, PhaseSchedule
from keras_dmpo.export.quantization import resolve_quantization
from keras_dmpo.inference import stage_export

BACKEND = keras.backend.backend()
OTHER_BACKENDS = ("jax", "jaxlib", "torch")

# Runs keras_dmpo.export's __main__ exactly as `-m` would, then reports the
# modules it imported (also when the export fails, for the error message).
WRAPPER = """
import json, runpy, sys
report = sys.argv.pop(1)
try:
    runpy.run_module("keras_dmpo.export", run_name="__main__", alter_sys=True)
finally:
    with open(report, "w") as handle:
        json.dump(sorted(sys.modules), handle)
"""


@pytest.fixture(scope="module")
def trained(tiny_vit_preset):
    """A DMPOClassifier fitted for one step on this backend (so it saves this
    backend's optimizer in its compile config)."""
    keras.utils.set_random_seed(0)
    model = DMPOClassifier.from_preset(tiny_vit_preset, num_classes=3, exits=[2, 4])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[PhaseCallback(PhaseSchedule(), verbose=0)])
    return EarlyExitModel(model, thresholds=[0.5, 0.0])


def test_the_export_subprocess_imports_neither_jax_nor_torch(trained, tmp_path, monkeypatch):
    report = tmp_path / "modules.json"
    commands = []
    run = subprocess.run

    def run_through_wrapper(command, **kwargs):
        assert command[1:3] == ["-m", "keras_dmpo.export"], command
        assert kwargs["env"]["KERAS_BACKEND"] == "tensorflow"
        commands.append(command)
        return run([command[0], "-c", WRAPPER, str(report), *command[3:]], **kwargs)

    monkeypatch.setattr(stage_export.subprocess, "run", run_through_wrapper)
    directory = tmp_path / "tflite"
    if BACKEND == "tensorflow":
        # export_tflite converts in-process here: take the subprocess path itself.
        stage_export._in_tensorflow_subprocess(
            "tflite", trained, str(directory), resolve_quantization(None), None, False, None
        )
    else:
        trained.export_tflite(str(directory))
    assert len(commands) == 1, "the export did not go through the subprocess"

    modules = json.loads(report.read_text())
    assert "keras_dmpo.inference.early_exit" in modules and "tensorflow" in modules
    other = [m for m in modules if m.partition(".")[0] in OTHER_BACKENDS]
    assert other == [], f"the TensorFlow export process imported {other[:10]}"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["exits"] == [2, 4]


# Keras' own note when the default load restores the optimizer; not under test.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_loading_without_compile_skips_the_training_optimizer(trained, tmp_path):
    """What the subprocess loads: the saved file names this backend's
    optimizer, and ``compile=False`` leaves it (and its module) out."""
    path = str(tmp_path / "model.keras")
    trained.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    optimizer = config["compile_config"]["optimizer"]
    if BACKEND == "torch":
        assert "torch" in optimizer["module"]
    assert EarlyExitModel.load(path).model.compiled  # the default keeps it
    loaded = EarlyExitModel.load(path, compile=False)
    assert not loaded.model.compiled
    assert loaded.thresholds == trained.thresholds
    images = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.exit_probabilities(images)[-1], trained.exit_probabilities(images)[-1], atol=1e-6
    )
