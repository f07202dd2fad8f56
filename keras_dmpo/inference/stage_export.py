"""EarlyExitModel -> TFLite / ONNX stage graphs, from any backend.

The converters trace TensorFlow graphs. On the TensorFlow backend we convert
in-process; on JAX and torch the model is saved (``.keras`` + thresholds) and
``python -m keras_dmpo.export`` rebuilds and converts it under
``KERAS_BACKEND=tensorflow`` (weights are backend-independent; measured
difference ~1e-6). That process loads the model without its compile state
and with JAX and torch hidden: the saved optimizer names the training
backend's module, and a second framework in the process can crash it.
"""

import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_dmpo.export import bundle
from keras_dmpo.export.onnx import export_onnx_stage_graphs
from keras_dmpo.export.quantization import check_calibration_data, resolve_quantization
from keras_dmpo.export.spec import ExportSpec
from keras_dmpo.export.tflite import export_stage_graphs
from keras_dmpo.litert.manifest import CUSTOM_RECIPE
from keras_dmpo.models.backbone_families import recomputed_on_load

# DMPOClassifier takes images in [0, 1]; the app rescales uint8 pixels to that range.
IDENTITY_PREPROCESSING = {"scale": 1.0, "offset": 0.0, "input_range": [0.0, 1.0]}


def export_spec(ee, class_names=None):
    """The ``ExportSpec`` of an ``EarlyExitModel`` as it stands."""
    image_shape = list(ee.model.image_shape)
    return ExportSpec(
        exits=ee.exits,
        policy=ee.policy,
        flops_per_exit=ee.flops_per_exit,
        full_model_flops=ee.full_model_flops,
        image_shape=image_shape,
        preprocessing={**IDENTITY_PREPROCESSING, "resize": image_shape[:2], "channels": image_shape[2]},
        class_names=class_names,
        extra={"stage_flops": ee.stage_flops},
    )


def export(
    ee,
    fmt,
    directory,
    *,
    quantization=None,
    representative_data=None,
    overwrite=False,
    class_names=None,
    web=False,
):
    """Export ``ee`` as ``fmt`` ("tflite" or "onnx"); returns the manifest.

    Bad arguments fail here, in the caller's process, before any conversion
    or subprocess.
    """
    directory = os.fspath(directory)
    spec = export_spec(ee, class_names)
    mode = resolve_quantization(quantization)
    check_calibration_data(representative_data, spec.image_shape, mode)
    if not isinstance(web, bool):
        raise ValueError(f"`web` must be True or False; got {web!r}.")
    if web and fmt != "tflite":
        raise ValueError(
            f"`web=True` is a TFLite option (LiteRT.js runs .tflite graphs); got format {fmt!r}."
        )
    bundle.check_output_directory(directory, overwrite)
    # Only after every argument check: the copy costs a model's build.
    ee = _with_float32_model(ee)
    if keras.backend.backend() != "tensorflow":
        return _in_tensorflow_subprocess(
            fmt, ee, directory, mode, representative_data, overwrite, class_names, web
        )
    stage_models = ee.model.build_stage_models(probabilities=True)
    monolithic = ee.model.build_single_exit_model()
    if fmt == "tflite":
        return export_stage_graphs(
            directory,
            stage_models,
            spec,
            monolithic_model=monolithic,
            quantization=quantization,
            representative_data=None
            if representative_data is None
            else np.asarray(representative_data, "float32"),
            overwrite=overwrite,
            web=web,
        )
    return export_onnx_stage_graphs(
        directory, stage_models, spec, monolithic_model=monolithic, overwrite=overwrite
    )


def _with_float32_model(ee):
    """The stage graphs are float32: a model trained under a mixed precision
    policy is exported from a float32 copy of its weights, with its policy."""
    if ee.model.computes_in_float32:
        return ee
    return type(ee)(ee.model.float32_copy(), policy=ee.policy)


def _in_tensorflow_subprocess(
    fmt, ee, directory, mode, representative_data, overwrite, class_names, web=False
):
    with tempfile.TemporaryDirectory(prefix="keras_dmpo_export_") as tmp:
        model_path = os.path.join(tmp, "model.keras")
        ee.save(model_path)
        command = [sys.executable, "-m", "keras_dmpo.export", fmt, model_path, os.path.abspath(directory)]
        exact = {
            name: keras.ops.convert_to_numpy(variable)
            for name, variable in recomputed_on_load(ee.model.backbone).items()
        }
        if exact:
            exact_path = os.path.join(tmp, "exact_variables.npz")
            np.savez(exact_path, **exact)
            command += ["--exact-variables", exact_path]
        if mode.name == CUSTOM_RECIPE:  # a recipe of the user's own goes as a file
            recipe_path = os.path.join(tmp, "recipe.json")
            with open(recipe_path, "w", encoding="utf-8") as handle:
                json.dump(mode.recipe, handle)
            command += ["--quantization-recipe", recipe_path]
        elif mode.name is not None:
            command += ["--quantization", mode.name]
        if representative_data is not None:
            data_path = os.path.join(tmp, "representative.npy")
            np.save(data_path, np.asarray(representative_data, "float32"))
            command += ["--representative-data", data_path]
        if overwrite:
            command.append("--overwrite")
        if web:
            command.append("--web")
        if class_names is not None:
            command += ["--class-names", json.dumps([str(c) for c in class_names])]
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise RuntimeError(
                f"{fmt} export in the TensorFlow subprocess failed (exit {result.returncode}):\n{tail}"
            )
    with open(os.path.join(directory, "manifest.json")) as handle:
        return json.load(handle)
