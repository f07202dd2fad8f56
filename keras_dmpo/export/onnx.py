"""Export early-exit stage graphs as ONNX files with a manifest.

Route: TensorFlow backend -> ``tf.function`` -> tf2onnx (``from_function``,
which freezes the variables), with two fixes measured on keras 3.15 /
keras-hub 0.32 / tf2onnx 1.17 / onnxruntime 1.32:

- Exact GELU lowers to TF's ``Erfc``, which tf2onnx emits unchanged and
  onnxruntime rejects ("No Op registered for Erfc"). A custom tf2onnx handler
  rewrites it as ``1 - Erf(x)`` (ONNX has ``Erf`` since opset 9).
- keras-hub's position embedding captures a constant position-ids tensor; a
  captured non-variable tensor becomes an extra graph input
  (``.../position_embedding/.../x:0``) that nobody feeds. It is removed when
  unused, else turned into an initializer holding the captured value.

The manifest has the TFLite schema with ``"format": "onnx"`` and
``quantization: null``; stage files are ``stage_k.onnx``. One naming
difference: ONNX forbids an input and an output of the same name, so the
tokens output is called ``"next_tokens"`` (input ``"tokens"`` as in TFLite).
"""

import numpy as np

from keras_dmpo.export import bundle
from keras_dmpo.export.tflite_convert import check_tensorflow_backend
from keras_dmpo.optional_deps import require

FORMAT = bundle.BundleFormat("onnx", "onnx", "keras_dmpo.export.onnx.export_onnx_stage_graphs")
DEFAULT_OPSET = 17
# Name of the tokens output in the ONNX graphs (see convert_to_onnx).
TOKEN_OUTPUT = "next_tokens"


def export_onnx_stage_graphs(
    directory, stage_models, spec, *, monolithic_model=None, overwrite=False, opset=DEFAULT_OPSET
):
    """Write ``stage_k.onnx`` (and ``monolithic.onnx``) plus ``manifest.json``.

    Arguments are those of ``keras_dmpo.export.tflite.export_stage_graphs``
    (without quantization), plus ``opset`` (ONNX opset, default 17). The
    batch dimension stays dynamic. Written atomically like the TFLite export.

    Returns:
        The manifest (dict) that was written.

    Example (TensorFlow backend, with the onnx extra installed):

    >>> import onnxruntime
    >>> from keras_dmpo import DMPOClassifier, EarlyExitModel
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 8])
    >>> spec = EarlyExitModel(model).export_spec()
    >>> manifest = export_onnx_stage_graphs("out_onnx/", model.build_stage_models(), spec)
    >>> session = onnxruntime.InferenceSession("out_onnx/stage_1.onnx")
    >>> [i.name for i in session.get_inputs()]
    ['images']
    """
    stage_models = bundle.check_stage_models(stage_models)
    spec.check_num_stages(len(stage_models))
    bundle.check_output_directory(directory, overwrite)
    check_tensorflow_backend("export_onnx_stage_graphs")

    def convert(model, index):
        proto = convert_to_onnx(model, opset=opset)
        return proto.SerializeToString(), _graph_io(proto)

    options = dict(
        monolithic_model=monolithic_model, overwrite=overwrite, manifest_extra={"opset": int(opset)}
    )
    return bundle.write_bundle(directory, spec, stage_models, convert, FORMAT, **options)


def convert_to_onnx(model, opset=DEFAULT_OPSET):
    """Convert a single-input Keras model (TensorFlow backend) to an ONNX proto.

    Input and output names are the Keras input name and the output dict keys,
    except that a ``"tokens"`` output is named ``"next_tokens"``.
    """
    check_tensorflow_backend("ONNX conversion")
    import tensorflow as tf

    tf2onnx = require("tf2onnx", "onnx", "ONNX export")
    if len(model.inputs) != 1:
        raise ValueError(f"Expected a single-input model; {model.name!r} has {len(model.inputs)}.")
    symbolic = model.inputs[0]
    spec = (tf.TensorSpec(symbolic.shape, symbolic.dtype, name=symbolic.name),)

    @tf.function(input_signature=spec)
    def serve(x):
        outputs = model(x, training=False)
        if not isinstance(outputs, dict):
            return outputs
        # ONNX names must be unique across inputs and outputs, and a middle
        # stage maps "tokens" to "tokens": its output becomes "next_tokens".
        return {TOKEN_OUTPUT if k == "tokens" else k: v for k, v in outputs.items()}

    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=spec, opset=opset, custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])}
    )
    _freeze_captured_inputs(proto, serve.get_concrete_function(), keep={symbolic.name})
    _check_supported(proto, model.name)
    return proto


def _erfc_as_one_minus_erf(ctx, node, name, args):
    # erfc(x) = 1 - erf(x); the node keeps its output name, so consumers stay.
    utils = require("tf2onnx.utils", "onnx", "ONNX export")

    x = node.input[0]
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
    erf = ctx.make_node("Erf", [x])
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])
    return node


def _freeze_captured_inputs(proto, concrete_function, keep):
    """Turn graph inputs that are captured TF tensors into constants."""
    import tensorflow as tf

    numpy_helper = require("onnx.numpy_helper", "onnx", "ONNX export")

    captured = {
        internal.name: external
        for external, internal in zip(
            concrete_function.captured_inputs, concrete_function.graph.internal_captures
        )
        if internal.dtype != tf.resource
    }
    used = {name for node in proto.graph.node for name in node.input}
    for graph_input in list(proto.graph.input):
        if graph_input.name in keep:
            continue
        if graph_input.name not in captured:
            raise RuntimeError(
                f"ONNX graph has an unexpected input {graph_input.name!r} that is "
                "neither the model input nor a captured tensor."
            )
        proto.graph.input.remove(graph_input)
        if graph_input.name in used:
            value = np.asarray(captured[graph_input.name].numpy())
            proto.graph.initializer.append(numpy_helper.from_array(value, graph_input.name))


def _check_supported(proto, name):
    unsupported = sorted({n.op_type for n in proto.graph.node if n.op_type == "Erfc"})
    if unsupported:
        raise RuntimeError(f"ONNX graph of {name!r} still has ops {unsupported}.")


def _graph_io(proto):
    helper = require("onnx.helper", "onnx", "ONNX export")

    def specs(values):
        out = []
        for value in values:
            tensor_type = value.type.tensor_type
            shape = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
            out.append({"name": value.name, "shape": shape, "dtype": dtype})
        return sorted(out, key=lambda s: s["name"])

    return {"inputs": specs(proto.graph.input), "outputs": specs(proto.graph.output)}
