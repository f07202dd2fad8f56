"""Write a sidecar and a TFLite bundle with the code at /work/bench (format 1)."""

import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, "/work/bench/tests")
from conftest import build_tiny_vit

from keras_dmpo import DMPOClassifier, EarlyExitModel

out = sys.argv[1]
backbone = build_tiny_vit(seed=0)
model = DMPOClassifier(backbone=backbone, num_classes=3, exits=[1, 2, 4])
rng = np.random.default_rng(0)
x = rng.random((40, 32, 32, 3)).astype("float32")
y = np.arange(40) % 3
ee = EarlyExitModel(model, criterion="patience", temperatures=[2.0, 1.5, 1.0])
ee.calibrate(x, y, max_accuracy_drop=0.5)
tmp = "/tmp/legacy_model"
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp)
ee.save(os.path.join(tmp, "model.keras"))
settings = json.load(open(os.path.join(tmp, "model.early_exit.json")))
settings.pop("model_sha256", None)
json.dump(settings, open(os.path.join(out, "patience.early_exit.json"), "w"), indent=2)
ee2 = EarlyExitModel(model, criterion="entropy")
ee2.calibrate(x, y, flops_budget=0.8)
shutil.rmtree("/tmp/legacy_bundle", ignore_errors=True)
manifest = ee2.export_tflite("/tmp/legacy_bundle")
shutil.copy("/tmp/legacy_bundle/manifest.json", os.path.join(out, "manifest.json"))
print(json.dumps(manifest["thresholds"]), manifest["format_version"])
