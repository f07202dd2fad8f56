"""`keras-dmpo train` killed mid-run resumes from its last finished epoch and
ends with the same model as an uninterrupted run of the same seed."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")
EPOCHS = 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_photos")
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(root / f"c{c}")
        for i in range(20):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            pixels[..., c] = 255  # a learnable colour cue
            PIL.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return str(root)


def train_command(preset, folder, output):
    return [
        sys.executable,
        "-c",
        "import sys; from keras_dmpo.cli import main; sys.exit(main())",
        "train",
        "--preset",
        preset,
        "--data",
        folder,
        "--exits",
        "1,2,4",
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "8",
        "--augment",
        "--output-dir",
        output,
        "--verbose",
        "0",
    ]


def run(command, **kwargs):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def finished_epochs(backup):
    path = os.path.join(backup, "training_metadata.json")
    try:
        with open(path) as handle:
            return json.load(handle)["epoch"]  # epochs finished
    except (OSError, ValueError):
        return 0


def weights(path):
    from keras_dmpo.models.dmpo_classifier import DMPOClassifier  # noqa: F401  (registers it for loading)

    model = keras.saving.load_model(path, compile=False)
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_a_killed_train_resumes_to_the_same_model(tiny_vit_preset, folder, tmp_path):
    straight = str(tmp_path / "straight")
    proc = run(train_command(tiny_vit_preset, folder, straight))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()[-3000:]

    resumed = str(tmp_path / "resumed")
    backup = os.path.join(resumed, ".train-backup")
    proc = run(train_command(tiny_vit_preset, folder, resumed))
    deadline = time.time() + 600
    while finished_epochs(backup) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, (
        "train finished before it could be killed: " + proc.stdout.read().decode()[-2000:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = finished_epochs(backup)
    assert 1 <= done < EPOCHS and not os.path.exists(os.path.join(resumed, "model.keras"))

    proc = run(train_command(tiny_vit_preset, folder, resumed))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert "resuming the interrupted run" in out.decode()
    assert not os.path.exists(backup)  # removed once training completed
    record = json.load(open(os.path.join(resumed, "training.json")))
    assert len(record["history"]["loss"]) == EPOCHS - done  # only the remaining epochs ran
    for a, b in zip(
        weights(os.path.join(straight, "model.keras")), weights(os.path.join(resumed, "model.keras"))
    ):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
