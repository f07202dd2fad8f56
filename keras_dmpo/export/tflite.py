"""Export early-exit stage graphs as TFLite (LiteRT) files with a manifest.

An early-exit model runs on a phone as K small graphs rather than one: stage 1
maps the image to the tokens after its exit block and that exit's
probabilities; each middle stage maps tokens to tokens and probabilities; the
last stage maps tokens to probabilities. The app runs stage 1, scores the
probabilities, and only continues with the inputs that are not confident yet.
``manifest.json`` tells the app (or ``keras_dmpo.litert.StagedRuntime``) the
files, tensor names, thresholds, criterion, preprocessing and FLOPs; its schema
is in docs/export.md.

Conversion runs on the TensorFlow backend (``EarlyExitModel.export_tflite``
does it in a TensorFlow subprocess on JAX and torch).
"""

import hashlib
import json
import os

import numpy as np

from keras_dmpo.export import manifest as manifest_lib
from keras_dmpo.export.tflite_convert import QUANTIZATIONS
from keras_dmpo.export.tflite_convert import check_tensorflow_backend
from keras_dmpo.export.tflite_convert import convert_to_tflite
from keras_dmpo.litert import validate_manifest

CREATED_BY = "keras_dmpo.export.tflite.export_stage_graphs"


def export_stage_graphs(
    directory,
    stage_models,
    *,
    exits,
    thresholds,
    criterion,
    flops_per_exit,
    full_model_flops,
    image_shape,
    preprocessing,
    class_names=None,
    monolithic_model=None,
    quantization=None,
    representative_data=None,
    overwrite=False,
    extra_metadata=None,
):
    """Write ``stage_k.tflite`` files, ``monolithic.tflite`` and ``manifest.json``.

    Args:
        directory: output directory. It must not exist or be empty, unless
            ``overwrite=True``. Everything is written into a temporary sibling
            directory that is renamed into place at the end, so a failed export
            leaves nothing behind (and keeps a previous export).
        stage_models: K Keras models (TensorFlow backend). Stage 1 takes an
            input named ``"images"`` ``(B, H, W, C)`` in model space (after
            preprocessing) and returns ``{"tokens", "probabilities"}``; middle
            stages take ``"tokens"`` and return both; the last stage takes
            ``"tokens"`` and returns ``{"probabilities"}``. With K == 1 the
            only stage maps images to ``{"probabilities"}``.
        exits: K increasing 1-based block numbers, one per stage.
        thresholds: K exit thresholds in [0, 1] (the last exit always answers;
            its threshold is kept for the record).
        criterion: ``"confidence"`` (max softmax) or ``"entropy"``
            (``1 - H / ln C``).
        flops_per_exit: K cumulative FLOPs per image to answer at exit k.
        full_model_flops: FLOPs of the backbone with only the last head (100%).
        image_shape: ``(H, W, C)`` of the model input.
        preprocessing: dict, ``x_model = x_raw * scale + offset`` with
            ``scale``/``offset`` numbers or per-channel lists, ``input_range``
            of the raw pixels (``[0, 255]``: uint8 input), ``resize`` (must be
            ``[H, W]``), ``channels``. Missing keys get identity defaults.
        class_names: optional list of C names.
        monolithic_model: optional Keras model images -> ``{"probabilities"}``
            of the last exit, exported as ``monolithic.tflite`` for comparison.
        quantization: ``None`` (float32), ``"dynamic"``, ``"float16"`` or
            ``"int8"`` (post-training, applied to every graph).
        representative_data: for ``"int8"``: a numpy array ``(N, H, W, C)`` of
            model-space images; stage k > 1 is calibrated on the tokens the
            preceding Keras stages compute from them.
        overwrite: replace a non-empty ``directory``.
        extra_metadata: optional JSON-serialisable dict stored as
            ``manifest["extra"]``.

    Returns:
        The manifest (dict) that was written.

    Raises:
        ValueError: for a bad argument (the message names it).
        FileExistsError: for a non-empty ``directory`` without ``overwrite``.
        RuntimeError: when a graph does not convert with builtin ops only, or
            not on the TensorFlow backend.

    Example:
    >>> manifest = export_stage_graphs(
    ...     "out/", [stage_1, stage_2], exits=[2, 4], thresholds=[0.9, 0.0],
    ...     criterion="confidence", flops_per_exit=[4e6, 8e6],
    ...     full_model_flops=7.9e6, image_shape=(32, 32, 3),
    ...     preprocessing={"scale": 1 / 255, "input_range": [0, 255]})
    >>> [s["file"] for s in manifest["stages"]]
    ['stage_1.tflite', 'stage_2.tflite']
    """
    stage_models = manifest_lib.check_stage_models(stage_models)
    checked = manifest_lib.check_common_arguments(
        len(stage_models),
        exits=exits,
        thresholds=thresholds,
        criterion=criterion,
        flops_per_exit=flops_per_exit,
        full_model_flops=full_model_flops,
        image_shape=image_shape,
        preprocessing=preprocessing,
        class_names=class_names,
        extra_metadata=extra_metadata,
    )
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}; got {quantization!r}."
        )
    calibration = manifest_lib.check_int8_data(
        representative_data, checked["image_shape"], quantization
    )
    manifest_lib.check_output_directory(directory, overwrite)
    _check_stage_signatures(stage_models, monolithic_model)
    check_tensorflow_backend("export_stage_graphs")

    with manifest_lib.staging_directory(directory, overwrite) as staging:
        stage_inputs = calibration
        entries = []
        for k, model in enumerate(stage_models):
            file_entry = _convert_and_write(
                model, staging, f"stage_{k + 1}.tflite", quantization, stage_inputs
            )
            entries.append(manifest_lib.stage_entry(k, checked, file_entry))
            if calibration is not None and k + 1 < len(stage_models):
                stage_inputs = _stage_tokens(model, stage_inputs)
        num_classes = _num_classes(entries[-1])
        manifest = manifest_lib.base_manifest(
            "tflite",
            checked,
            quantization=quantization,
            num_classes=num_classes,
            created_by=CREATED_BY,
        )
        manifest["stages"] = entries
        if monolithic_model is not None:
            entry = _convert_and_write(
                monolithic_model, staging, "monolithic.tflite", quantization, calibration
            )
            entry["flops"] = checked["full_model_flops"]
            manifest["monolithic"] = entry
        # The runtime's own schema check: an export it would refuse is a bug
        # here, caught before anything is published.
        validate_manifest(json.loads(json.dumps(manifest)), source="the new manifest")
        # Last: a directory with a manifest is a complete export.
        manifest_lib.write_manifest(staging, manifest)
    return manifest


def _check_stage_signatures(stage_models, monolithic_model):
    """Fail before converting anything if a stage has the wrong inputs/outputs.

    Checks functional models only (a subclassed model has no symbolic
    inputs); the converted signature is checked again in the manifest.
    """
    last = len(stage_models) - 1
    named = [(f"stage_models[{k}]", m, "images" if k == 0 else "tokens",
              {"probabilities"} if k == last else {"tokens", "probabilities"})
             for k, m in enumerate(stage_models)]
    if monolithic_model is not None:
        named.append(("monolithic_model", monolithic_model, "images", {"probabilities"}))
    for label, model, want_input, want_outputs in named:
        try:
            inputs = list(model.inputs)
            outputs = model.output
        except (AttributeError, ValueError):
            continue
        names = [t.name for t in inputs]
        if names != [want_input]:
            raise ValueError(
                f"`{label}` must take one input named {want_input!r}; it has "
                f"inputs {names}."
            )
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        if not isinstance(outputs, dict) or set(outputs) != want_outputs:
            raise ValueError(
                f"`{label}` must return a dict with keys {sorted(want_outputs)}; "
                f"it returns {got}."
            )


def _stage_tokens(model, inputs, batch_size=32):
    """Tokens a Keras stage hands to the next one (int8 calibration data)."""
    chunks = [
        np.asarray(model(inputs[i : i + batch_size], training=False)["tokens"])
        for i in range(0, inputs.shape[0], batch_size)
    ]
    return np.concatenate(chunks, axis=0)


def _convert_and_write(model, staging, file_name, quantization, calibration):
    flatbuffer = convert_to_tflite(
        model,
        quantization=quantization,
        representative_data=calibration if quantization == "int8" else None,
    )
    path = os.path.join(staging, file_name)
    with open(path, "wb") as handle:
        handle.write(flatbuffer)
    entry = {
        "file": file_name,
        "sha256": hashlib.sha256(flatbuffer).hexdigest(),
        "size_bytes": len(flatbuffer),
    }
    entry.update(signature_io(flatbuffer))
    return entry


def signature_io(flatbuffer):
    """Signature key and input/output specs as the LiteRT runner sees them.

    Shapes come from ``shape_signature`` (``-1`` for the batch dimension).
    """
    from keras_dmpo.export.litert_run import make_interpreter

    interpreter = make_interpreter(model_content=flatbuffer)
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise RuntimeError(f"Expected one signature; got {sorted(signatures)}.")
    key = next(iter(signatures))
    runner = interpreter.get_signature_runner(key)

    def specs(details):
        return [
            {
                "name": name,
                "shape": [int(d) for d in detail["shape_signature"]],
                "dtype": np.dtype(detail["dtype"]).name,
            }
            for name, detail in sorted(details.items())
        ]

    return {
        "signature_key": key,
        "inputs": specs(runner.get_input_details()),
        "outputs": specs(runner.get_output_details()),
    }


def _num_classes(entry):
    for spec in entry["outputs"]:
        if spec["name"] == "probabilities":
            return int(spec["shape"][-1])
    raise RuntimeError(f"{entry['file']} has no 'probabilities' output: {entry['outputs']}.")
