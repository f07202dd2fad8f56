"""Issue check: the DINOv2-S short name trains one step, calibrates and exports
on this backend (``KERAS_BACKEND``), and LiteRT answers like Keras.

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b .venv/bin/python benchmarks/dinov2_backend_smoke.py; done

Appends one line per backend to ``benchmarks/results/dinov2_backend_smoke.jsonl``.
"""

import json
import os
import tempfile
import time

import keras
import numpy as np

from keras_dmpo import DMPOClassifier, EarlyExitModel, PhaseCallback, PhaseSchedule
from keras_dmpo.litert import StagedRuntime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    start = time.time()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(48, 112, 112, 3)).astype("float32")
    y = rng.integers(0, 10, size=48)
    model = DMPOClassifier.from_preset("dinov2_small_imgfocus", num_classes=10, image_shape=(112, 112, 3))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    before = [w.copy() for w in model.get_weights()]
    model.fit(
        x[:16],
        y[:16],
        batch_size=16,
        epochs=1,
        verbose=0,
        callbacks=[PhaseCallback(PhaseSchedule(), verbose=0)],
    )
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    ee = EarlyExitModel(model)
    record = ee.calibrate(x[16:], y[16:], flops_budget=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        ee.export_tflite(os.path.join(tmp, "tflite"))
        lite = StagedRuntime(os.path.join(tmp, "tflite")).predict(x[16:])
    keras_out = ee.predict(x[16:])
    result = {
        "backend": keras.backend.backend(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "weights_changed_by_one_step": int(changed),
        "calibrated_fraction": round(record.expected_fraction, 4)
        if hasattr(record, "expected_fraction")
        else None,
        "thresholds": [round(t, 4) for t in ee.thresholds],
        "litert_same_exit": float(np.mean(lite["exit_index"] == keras_out["exit_index"])),
        "litert_same_label": float(np.mean(lite["labels"] == keras_out["labels"])),
        "litert_max_prob_diff": float(np.abs(lite["probabilities"] - keras_out["probabilities"]).max()),
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps(result))
    with open(os.path.join(ROOT, "benchmarks", "results", "dinov2_backend_smoke.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
