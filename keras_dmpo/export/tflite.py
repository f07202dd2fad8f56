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

import numpy as np

from keras_dmpo.export import bundle, quantizer
from keras_dmpo.export.quantization import check_calibration_data, resolve_quantization
from keras_dmpo.export.tflite_convert import (
    check_builtin_ops,
    check_tensorflow_backend,
    convert_to_tflite,
    make_interpreter,
)

FORMAT = bundle.BundleFormat("tflite", "tflite", "keras_dmpo.export.tflite.export_stage_graphs")


def export_stage_graphs(
    directory,
    stage_models,
    spec,
    *,
    monolithic_model=None,
    quantization=None,
    representative_data=None,
    overwrite=False,
    web=False,
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
        spec: the ``keras_dmpo.export.spec.ExportSpec`` (exits, thresholds,
            criterion, FLOPs, image shape, preprocessing, class names).
        monolithic_model: optional Keras model images -> ``{"probabilities"}``
            of the last exit, exported as ``monolithic.tflite`` for comparison.
        quantization: ``None`` (float32); a TFLite converter mode
            ``"dynamic"``, ``"float16"`` or ``"int8"``; a LiteRT quantizer
            recipe, by name (``"weight_only_int8"``, ``"weight_only_int4"``,
            ``"dynamic_int8"``, ``"dynamic_int4_blockwise"``,
            ``"static_int8"``, ``"static_int16"``, ``"mixed"``,
            ``"int8_matmuls"``) or a list of
            the quantizer's rules (``keras_dmpo.export.quantizer``; recorded
            as ``"custom"``). Post-training, applied to every graph; a recipe
            is written into the manifest (``quantization_recipe``) as
            applied.
        representative_data: for ``"int8"`` and the recipes with static
            activations (``"static_int8"``, ``"static_int16"``, ``"mixed"``,
            ``"int8_matmuls"``):
            a numpy array ``(N, H, W, C)`` of model-space images (a recipe
            takes at least 32); stage k > 1 is calibrated on the tokens the
            preceding Keras stages compute from them.
        overwrite: replace a non-empty ``directory``.
        web: write graphs with a fixed batch of 1 instead of a dynamic
            batch. LiteRT.js (the browser runtime, ``keras-dmpo web``) cannot
            resize a graph's inputs and refuses the dynamic ones;
            ``StagedRuntime`` runs both kinds (a batch-1 bundle one image at
            a time). The manifest's tensor shapes say which kind a bundle is.
            A static recipe calibrates such graphs one image at a time.

    Returns:
        The manifest (dict) that was written.

    Raises:
        ValueError: for a bad argument (the message names it).
        FileExistsError: for a non-empty ``directory`` without ``overwrite``.
        RuntimeError: when a graph does not convert with builtin ops only, or
            not on the TensorFlow backend.

    Example (TensorFlow backend; ``EarlyExitModel.export_tflite`` does the
    same from a tuned model on any backend):

    >>> from keras_dmpo import DMPOClassifier, EarlyExitModel
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 8])
    >>> spec = EarlyExitModel(model, thresholds=[0.5, 0.0]).export_spec()
    >>> manifest = export_stage_graphs("out/", model.build_stage_models(), spec)
    >>> [s["file"] for s in manifest["stages"]]
    ['stage_1.tflite', 'stage_2.tflite']
    """
    stage_models = bundle.check_stage_models(stage_models)
    spec.check_num_stages(len(stage_models))
    mode = resolve_quantization(quantization)
    calibration = check_calibration_data(representative_data, spec.image_shape, mode)
    if not isinstance(web, bool):
        raise ValueError(f"`web` must be True or False; got {web!r}.")
    bundle.check_output_directory(directory, overwrite)
    _check_stage_signatures(stage_models, monolithic_model)
    check_tensorflow_backend("export_stage_graphs")

    stage_inputs = [calibration]  # what the next stage is calibrated on
    applied_recipe = list(mode.recipe or [])  # grows by each graph's blockwise fallbacks

    def convert(model, index):
        data = calibration if index is None else stage_inputs[0]
        batch_size = 1 if web else None
        if mode.recipe is None:
            flatbuffer = convert_to_tflite(
                model, quantization=mode.name, representative_data=data, batch_size=batch_size
            )
        else:
            graph = quantizer.quantize_flatbuffer(
                convert_to_tflite(model, batch_size=batch_size),
                mode.recipe,
                calibration_inputs=data,
                what=f"model {model.name!r}",
            )
            flatbuffer = graph.flatbuffer
            check_builtin_ops(flatbuffer, what=f"quantized model {model.name!r}")
            applied_recipe.extend(rule for rule in graph.recipe if rule not in applied_recipe)
        if data is not None and index is not None and index + 1 < len(stage_models):
            stage_inputs[0] = _stage_tokens(model, data)
        return flatbuffer, signature_io(flatbuffer)

    def recipe_record():
        # After every graph: the recipe as applied to all of them (each
        # fallback rule names one op of one graph, so applying this one
        # recipe to every float graph gives the same files).
        if mode.recipe is None:
            return {}
        return {"quantization_recipe": applied_recipe, "quantization_tool": quantizer.quantizer_version()}

    options = dict(monolithic_model=monolithic_model, quantization=mode.name, overwrite=overwrite)
    return bundle.write_bundle(
        directory, spec, stage_models, convert, FORMAT, manifest_extra=recipe_record, **options
    )


def _check_stage_signatures(stage_models, monolithic_model):
    """Fail before converting anything if a stage has the wrong inputs/outputs.

    Checks functional models only (a subclassed model has no symbolic
    inputs); the converted signature is checked again in the manifest.
    """
    last = len(stage_models) - 1
    named = [
        (
            f"stage_models[{k}]",
            m,
            "images" if k == 0 else "tokens",
            {"probabilities"} if k == last else {"tokens", "probabilities"},
        )
        for k, m in enumerate(stage_models)
    ]
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
            raise ValueError(f"`{label}` must take one input named {want_input!r}; it has inputs {names}.")
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        if not isinstance(outputs, dict) or set(outputs) != want_outputs:
            raise ValueError(
                f"`{label}` must return a dict with keys {sorted(want_outputs)}; it returns {got}."
            )


def _stage_tokens(model, inputs, batch_size=32):
    """Tokens a Keras stage hands to the next one (calibration data)."""
    chunks = [
        np.asarray(model(inputs[i : i + batch_size], training=False)["tokens"])
        for i in range(0, inputs.shape[0], batch_size)
    ]
    return np.concatenate(chunks, axis=0)


def signature_io(flatbuffer):
    """Signature key and input/output specs as the LiteRT runner sees them.

    Shapes come from ``shape_signature`` (``-1`` for the batch dimension).
    """
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
