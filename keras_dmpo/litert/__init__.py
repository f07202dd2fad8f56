"""Staged early-exit runtime for exported TFLite stage graphs (LiteRT + numpy).

This module is what a phone-side or server-side user needs to run an exported
model: it imports only numpy and the standard library at import, and
``ai_edge_litert`` when the first stage is loaded. It never imports Keras,
keras-hub or TensorFlow (``import keras_dmpo.litert`` is tested to keep
``sys.modules`` free of them).

The directory is the output of ``EarlyExitModel.export_tflite`` (or
``keras_dmpo.export.tflite.export_stage_graphs``): ``manifest.json`` plus
``stage_1.tflite .. stage_K.tflite`` and optionally ``monolithic.tflite``.
See docs/export.md for the manifest schema and docs/reliability.md for what
the runtime checks before it opens any stage file.

The package: ``manifest`` (the schema and the bundle checks), ``finite``
(NaN/inf input checks) and ``runtime`` (``StagedRuntime``).
"""

from keras_dmpo.litert.finite import check_finite, non_finite_samples
from keras_dmpo.litert.manifest import FORMAT_VERSION, MANIFEST_NAME, validate_manifest
from keras_dmpo.litert.runtime import StagedRuntime

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "StagedRuntime",
    "check_finite",
    "non_finite_samples",
    "validate_manifest",
]
