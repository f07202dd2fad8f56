"""EarlyExitModel -> TFLite / ONNX stage graphs, from any backend.

The converters trace TensorFlow graphs. On the TensorFlow backend we convert
in-process; on JAX and torch the model is saved (``.keras`` + thresholds) and a
``KERAS_BACKEND=tensorflow`` subprocess rebuilds it and converts it (weights
are backend-independent; measured difference ~1e-6).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_dmpo.models.backbone_families import recomputed_on_load

IDENTITY_PREPROCESSING = {"scale": 1.0, "offset": 0.0, "input_range": [0.0, 1.0]}


def _metadata(ee, class_names):
    image_shape = list(ee.model.image_shape)
    return dict(
        exits=list(ee.exits),
        thresholds=ee.thresholds,
        criterion=ee.criterion,
        flops_per_exit=ee.flops_per_exit,
        full_model_flops=ee.full_model_flops,
        image_shape=image_shape,
        # DMPOClassifier takes images in [0, 1] (the shipped preset's input);
        # the app rescales uint8 pixels to that range.
        preprocessing={**IDENTITY_PREPROCESSING, "resize": image_shape[:2], "channels": image_shape[2]},
        class_names=None if class_names is None else [str(c) for c in class_names],
        extra_metadata={
            "stage_flops": ee.stage_flops,
            "calibration": None if ee.calibration is None else ee.calibration.to_dict(),
        },
    )


def _check_cheap(directory, quantization, representative_data, overwrite, image_shape):
    """Fail in the caller's process, before any subprocess, on bad arguments."""
    from keras_dmpo.export import manifest as manifest_lib
    from keras_dmpo.export.tflite_convert import QUANTIZATIONS

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}; got {quantization!r}.")
    manifest_lib.check_int8_data(representative_data, tuple(image_shape), quantization)
    manifest_lib.check_output_directory(directory, overwrite)


def export_tflite(ee, directory, quantization=None, representative_data=None,
                  overwrite=False, class_names=None):
    directory = os.fspath(directory)
    _check_cheap(directory, quantization, representative_data, overwrite, ee.model.image_shape)
    if keras.backend.backend() == "tensorflow":
        from keras_dmpo.export.tflite import export_stage_graphs

        return export_stage_graphs(
            directory,
            ee.model.build_stage_models(probabilities=True),
            monolithic_model=ee.model.build_single_exit_model(),
            quantization=quantization,
            representative_data=None if representative_data is None else np.asarray(representative_data, "float32"),
            overwrite=overwrite,
            **_metadata(ee, class_names),
        )
    return _in_tensorflow_subprocess(
        "tflite", ee, directory, quantization, representative_data, overwrite, class_names
    )


def export_onnx(ee, directory, overwrite=False, class_names=None):
    directory = os.fspath(directory)
    _check_cheap(directory, None, None, overwrite, ee.model.image_shape)
    if keras.backend.backend() == "tensorflow":
        from keras_dmpo.export.onnx import export_onnx_stage_graphs

        return export_onnx_stage_graphs(
            directory,
            ee.model.build_stage_models(probabilities=True),
            monolithic_model=ee.model.build_single_exit_model(),
            overwrite=overwrite,
            **_metadata(ee, class_names),
        )
    return _in_tensorflow_subprocess("onnx", ee, directory, None, None, overwrite, class_names)


def _in_tensorflow_subprocess(fmt, ee, directory, quantization, representative_data,
                              overwrite, class_names):
    with tempfile.TemporaryDirectory(prefix="keras_dmpo_export_") as tmp:
        model_path = os.path.join(tmp, "model.keras")
        ee.save(model_path)
        command = [sys.executable, "-m", "keras_dmpo.export.early_exit_export", fmt,
                   model_path, os.path.abspath(directory)]
        exact = {
            name: keras.ops.convert_to_numpy(variable)
            for name, variable in recomputed_on_load(ee.model.backbone).items()
        }
        if exact:
            exact_path = os.path.join(tmp, "exact_variables.npz")
            np.savez(exact_path, **exact)
            command += ["--exact-variables", exact_path]
        if quantization:
            command += ["--quantization", quantization]
        if representative_data is not None:
            data_path = os.path.join(tmp, "representative.npy")
            np.save(data_path, np.asarray(representative_data, "float32"))
            command += ["--representative-data", data_path]
        if overwrite:
            command.append("--overwrite")
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a saved EarlyExitModel (TensorFlow backend).")
    parser.add_argument("format", choices=["tflite", "onnx"])
    parser.add_argument("model")
    parser.add_argument("directory")
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--representative-data", default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--class-names", default=None)
    parser.add_argument("--exact-variables", default=None,
                        help="npz of variables keras-hub recomputes on load (see recomputed_on_load)")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("run with KERAS_BACKEND=tensorflow")
    from keras_dmpo.inference.early_exit import EarlyExitModel

    ee = EarlyExitModel.load(args.model)
    if args.exact_variables:
        with np.load(args.exact_variables) as exact:
            for name, variable in recomputed_on_load(ee.model.backbone).items():
                variable.assign(exact[name])
    class_names = None if args.class_names is None else json.loads(args.class_names)
    if args.format == "tflite":
        data = None if args.representative_data is None else np.load(args.representative_data)
        export_tflite(ee, args.directory, args.quantization, data, args.overwrite, class_names)
    else:
        export_onnx(ee, args.directory, args.overwrite, class_names)


if __name__ == "__main__":
    main()
