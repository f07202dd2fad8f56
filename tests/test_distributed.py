"""DMPOClassifier.fit on two devices: JAX DataParallel and TF MirroredStrategy.

Both engines need their device flags before they initialise, so each check
runs this file as a script in a fresh subprocess (``python
tests/test_distributed.py jax|tensorflow``) with two logical CPU devices:
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` for JAX,
``tf.config.set_logical_device_configuration`` for TensorFlow.

Inside the subprocess the same random initial weights are trained for two
steps (batch 32, plain SGD so that a wrongly scaled gradient shows, a
PhaseCallback that switches to phase 2 at the second step) once on one
device and once on two. The per-step losses, the logged loss weights and the
trained weights must match.

The subprocess does not depend on the pytest process's backend, so both checks
could run under every ``KERAS_BACKEND``, but each costs ~35-55 s of CPU (two
keras-hub imports' worth of TensorFlow start-up, four model builds, two fits).
To keep the three-backend suite short, the JAX check runs in the JAX pytest
process and the TensorFlow check in the TensorFlow one; the other backends skip
them with the reason.
"""

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4


# --------------------------------------------------------------------------
# The subprocess.
def _worker(engine):
    if engine == "jax":
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
        )
    os.environ["KERAS_BACKEND"] = engine
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    if engine == "tensorflow":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import keras
    from conftest import build_tiny_vit

    from keras_dmpo import DMPOClassifier, PhaseCallback, PhaseSchedule

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=64)

    class BatchLosses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses, self.weights = [], []

        def on_train_batch_end(self, batch, logs=None):
            # Keras logs the running mean of the epoch; batch 0 is the first
            # step's loss.
            self.losses.append(float(logs["loss"]))
            self.weights.append([float(logs[f"loss_weight_{k + 1}"]) for k in range(4)])

    def build():
        model = DMPOClassifier(build_tiny_vit(seed=0), num_classes=3, exits=[1, 2, 3])
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        return model

    def train(model, initial):
        model.set_weights(initial)
        before = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
        record = BatchLosses()
        schedule = PhaseSchedule(switch_fraction=0.5, distill_temperature=2.0)
        model.fit(
            x,
            y,
            batch_size=32,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[PhaseCallback(schedule, verbose=0), record],
        )
        trained = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
        record.change = max(float(np.max(np.abs(a - b))) for a, b in zip(trained, before))
        return record, trained

    keras.utils.set_random_seed(1)
    single = build()
    initial = single.get_weights()
    single_record, single_weights = train(single, initial)

    if engine == "jax":
        import jax

        devices = jax.devices()
        assert len(devices) == 2, devices
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        multi = build()
        multi_record, multi_weights = train(multi, initial)
        replicas = len(devices)
        where = str(multi.trainable_weights[0].value.sharding)
    else:
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            multi = build()
        multi_record, multi_weights = train(multi, initial)
        replicas = strategy.num_replicas_in_sync
        where = type(multi.trainable_weights[0].value).__name__

    print(
        "RESULT "
        + json.dumps(
            {
                "engine": engine,
                "replicas": replicas,
                "variable_placement": where,
                "single_losses": single_record.losses,
                "multi_losses": multi_record.losses,
                "single_loss_weights": single_record.weights,
                "multi_loss_weights": multi_record.weights,
                "max_weight_difference": max(
                    float(np.max(np.abs(a - b))) for a, b in zip(single_weights, multi_weights)
                ),
                "max_weight_change": single_record.change,
            }
        )
    )


# --------------------------------------------------------------------------
# The tests.
def _run(engine):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KERAS_BACKEND")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), engine],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _check(result):
    assert result["replicas"] == 2
    single, multi = result["single_losses"], result["multi_losses"]
    assert len(single) == len(multi) == 2
    # First step: same weights, same data -> same loss.
    np.testing.assert_allclose(multi[0], single[0], rtol=TOLERANCE, atol=TOLERANCE)
    # Second step (phase 2, distillation on) after one SGD update: catches a
    # gradient summed instead of averaged over the replicas.
    np.testing.assert_allclose(multi[1], single[1], rtol=TOLERANCE, atol=TOLERANCE)
    assert result["multi_loss_weights"] == result["single_loss_weights"]
    assert result["multi_loss_weights"][0] == [0.25, 0.5, 0.75, 1.0]
    assert result["multi_loss_weights"][1] == [1.0, 0.75, 0.5, 0.25]
    assert result["max_weight_change"] > 1e-3  # training really moved the weights
    assert result["max_weight_difference"] < TOLERANCE


def _skip_unless(backend):
    import keras
    import pytest

    if keras.backend.backend() != backend:
        pytest.skip(
            f"runs in the KERAS_BACKEND={backend} pytest process only (a ~40 s "
            f"subprocess); this process is {keras.backend.backend()}"
        )


def test_jax_data_parallel_matches_single_device():
    _skip_unless("jax")
    _check(_run("jax"))


def test_tf_mirrored_strategy_matches_single_device():
    _skip_unless("tensorflow")
    _check(_run("tensorflow"))


if __name__ == "__main__":
    _worker(sys.argv[1])
