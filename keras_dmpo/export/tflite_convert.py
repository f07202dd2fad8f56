"""Keras model -> TFLite flatbuffer with TFLITE_BUILTINS only.

Runs on the TensorFlow backend only: the converter traces a TF SavedModel.
(``from_concrete_functions`` without frozen variables gives NaN outputs, so we
go through a SavedModel; a minimal one, see ``_write_saved_model``.)
Restricting ``supported_ops`` to the builtins makes a graph that needs Flex
(TF select) ops fail loudly instead of silently pulling in the Flex delegate,
which LiteRT on Android does not ship by default.
"""

import tempfile

import keras

# The converter's modes are values of a manifest field that the LiteRT
# runtime checks, so its schema (numpy only, importable without Keras) holds
# the one list (next to the LiteRT quantizer's recipes, export/quantizer.py).
from keras_dmpo.litert.manifest import CONVERTER_QUANTIZATIONS as QUANTIZATIONS


def check_tensorflow_backend(what):
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"{what} runs on the TensorFlow backend only (the TFLite converter "
            f"traces TensorFlow graphs); the current backend is "
            f"{keras.backend.backend()!r}. Use EarlyExitModel.export_tflite, "
            "which converts in a TensorFlow subprocess from any backend."
        )


def convert_to_tflite(model, quantization=None, representative_data=None, batch_size=None):
    """Convert a Keras model to TFLite bytes, builtin ops only.

    Args:
        model: a built ``keras.Model`` (TensorFlow backend).
        batch_size: ``None`` for a dynamic batch dimension (``-1`` in the
            graph; the runtime resizes it), or a fixed batch size such as 1,
            which LiteRT.js needs (it cannot resize inputs).
        quantization: ``None`` (float32), ``"dynamic"`` (int8 weights),
            ``"float16"`` (fp16 weights) or ``"int8"`` (full integer ops with
            float input/output; needs ``representative_data``).
        representative_data: for ``"int8"``: an array of samples
            ``(N, ...)`` of a single-input model, a callable returning an
            iterable of input lists, or a sequence of input arrays (one sample
            batch each).

    Returns:
        The ``.tflite`` flatbuffer as ``bytes``.

    Raises:
        RuntimeError: when conversion fails or the result uses any non-builtin
            (Flex or custom) op.

    Example (TensorFlow backend):

    >>> inputs = keras.Input((4,), name="x")
    >>> model = keras.Model(inputs, {"y": keras.layers.Dense(2)(inputs)})
    >>> flatbuffer = convert_to_tflite(model, quantization="float16")
    >>> flatbuffer[4:8]   # the TFLite file identifier
    b'TFL3'
    """
    check_tensorflow_backend("TFLite conversion")
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}; got {quantization!r}.")
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "`quantization='int8'` needs `representative_data` (a few hundred "
            "typical input images) to calibrate activation ranges."
        )
    check_batch_size(batch_size)
    with tempfile.TemporaryDirectory() as saved_model_dir:
        _write_saved_model(model, saved_model_dir, batch_size)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == "int8":
            converter.representative_dataset = _as_representative_dataset(representative_data)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter raises ConverterError & co.
            raise RuntimeError(
                "TFLite conversion with TFLITE_BUILTINS only failed for model "
                f"{model.name!r}; an op without a builtin kernel is likely "
                f"(no Flex ops are allowed): {error}"
            ) from error
    check_builtin_ops(flatbuffer, what=f"model {model.name!r}")
    return flatbuffer


def check_batch_size(batch_size):
    """None (dynamic) or a positive int, else a ``ValueError`` naming ``batch_size``."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be None (dynamic) or a positive integer; got {batch_size!r}.")
    return batch_size


def _write_saved_model(model, directory, batch_size=None):
    """A minimal SavedModel: the variables and one serving function.

    ``model.export`` traces every function several times (about half of the
    conversion time for a ViT stage). A functional model only needs one trace
    with the batch dimension ``batch_size`` (None: unknown, which the
    converter writes as -1); other models go through ``export``.
    """
    import tensorflow as tf

    inputs = getattr(model, "inputs", None)
    if not inputs:
        if batch_size is not None:
            raise ValueError(
                f"`batch_size={batch_size}` needs a functional model (one with symbolic inputs); "
                f"{model.name!r} has none."
            )
        model.export(directory, format="tf_saved_model", verbose=False)
        return
    specs = [
        tf.TensorSpec((batch_size,) + tuple(t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in inputs
    ]

    def serve(*tensors):
        return model(tensors[0] if len(tensors) == 1 else list(tensors), training=False)

    module = tf.Module()
    # Tracked here so the SavedModel stores the weights (and the converter
    # freezes them); Keras variables wrap tf.Variables in ``.value``.
    module.weights = [v.value for v in model.variables]
    module.serve = tf.function(serve, input_signature=specs, autograph=False)
    tf.saved_model.save(module, directory, signatures={"serving_default": module.serve})


def non_builtin_ops(flatbuffer):
    """Names of the custom (incl. Flex) operators a TFLite flatbuffer uses.

    Reads the flatbuffer's operator codes: every op that is not a LiteRT
    builtin is stored as ``CUSTOM`` with a ``custom_code`` (``"FlexErfc"``,
    ...). Interpreter op details cannot be used for this because the XNNPACK
    delegate replaces the ops it takes by ``DELEGATE`` nodes.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    names = []
    for code in model.operatorCodes or []:
        # Newer schemas moved builtin codes > 127 to ``builtinCode``; take
        # the larger of the two fields, as the TFLite tooling does.
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.customCode
            names.append(custom.decode() if isinstance(custom, bytes) else str(custom))
    return sorted(set(names))


def check_builtin_ops(flatbuffer, what="model"):
    """Raise ``RuntimeError`` if the flatbuffer uses any non-builtin op."""
    custom = non_builtin_ops(flatbuffer)
    if custom:
        raise RuntimeError(
            f"The TFLite {what} uses non-builtin ops {custom}: LiteRT on Android "
            "would need the Flex delegate or custom kernels. Only TFLITE_BUILTINS "
            "are allowed."
        )


def _as_representative_dataset(data):
    if callable(data):
        return data
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        # One array of samples for a single-input model: feed batches of one
        # (iterating the array itself would drop the batch dimension).
        array = keras.ops.convert_to_numpy(data).astype("float32")

        def array_generator():
            for i in range(array.shape[0]):
                yield [array[i : i + 1]]

        return array_generator

    def generator():
        for sample in data:
            sample = sample if isinstance(sample, (list, tuple)) else [sample]
            yield [keras.ops.convert_to_numpy(s).astype("float32") for s in sample]

    return generator


def make_interpreter(model_content=None, model_path=None, num_threads=None):
    """A LiteRT interpreter with its tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_content, model_path=model_path, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter
