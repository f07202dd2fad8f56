"""A LiteRT quantizer recipe applied to a float32 TFLite graph.

The TFLite converter quantizes a whole graph one way (``convert_to_tflite``'s
``"dynamic"``, ``"float16"``, ``"int8"``). The LiteRT quantizer
(``litert-quantizer``, the ``quantize`` extra) rewrites an existing float
``.tflite`` by a *recipe*: a list of rules, each choosing ops by a regex on
their scope (the op's output tensor names, which carry the Keras layer
names) and an op type, and giving them a precision. A later rule overrides
an earlier one for the ops both select. So a ViT can keep its LayerNorms in
float and run everything else with int8 activations, which a converter mode
cannot say.

A rule, as the quantizer reads it (JSON)::

    {"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize",
     "op_config": {"weight_tensor_config": {"num_bits": 8, "symmetric": true,
                                            "granularity": "CHANNELWISE", "dtype": "INT"},
                   "compute_precision": "INTEGER", "explicit_dequantize": false}}

``algorithm_key: "no_quantize"`` keeps the selected ops float. The named
recipes are ``RECIPES``; any other recipe of the quantizer's rules is
accepted too (``check_recipe``). Two rules are appended to every recipe: the
graph's inputs and outputs stay float32, because the runtime (and every app
reading the manifest) feeds and reads float32.
"""

import collections
import copy
import json
import os
import re
import warnings

import numpy as np

from keras_dmpo.litert.manifest import QUANTIZER_RECIPES
from keras_dmpo.optional_deps import require

ALGORITHM = "min_max_uniform_quantize"
KEEP_FLOAT = "no_quantize"
# Ops inside a Keras LayerNormalization: keras-hub's ViT names them ln_1,
# ln_2 and ln, DINOv2 norm1, norm2 and layernorm, keras_dmpo's heads
# layer_norm. (One path component starting with "ln" or holding "norm".)
LAYER_NORM_SCOPE = r"(^|/)(ln|[^/;]*norm)[^/;]*/"
# The covariance head's pooling: covariance, trace normalisation and the
# Newton-Schulz matrix square root (a chain of BATCH_MATMULs, SQRT, DIV).
COVARIANCE_SCOPE = r"(^|/)covariance_pooling[^/;]*/"
# Images per calibration invoke (speed only: the ranges are the extremes
# over all images, whatever the batching; see _running_extremes).
CALIBRATION_BATCH = 8


def _weights(bits, granularity="CHANNELWISE"):
    # LiteRT kernels take symmetric integer weights only.
    return {"num_bits": bits, "symmetric": True, "granularity": granularity, "dtype": "INT"}


def _rule(op_config, operation="*", regex=".*"):
    return {"regex": regex, "operation": operation, "algorithm_key": ALGORITHM, "op_config": op_config}


def _keep_float(operation="*", regex=".*"):
    return {"regex": regex, "operation": operation, "algorithm_key": KEEP_FLOAT}


def _weight_only(bits):
    # Weights stored as integers, dequantized in the graph: float compute.
    return {"weight_tensor_config": _weights(bits), "compute_precision": "FLOAT", "explicit_dequantize": True}


def _dynamic(bits, granularity="CHANNELWISE"):
    # Integer weights; the kernel quantizes its float input on the fly.
    return {
        "weight_tensor_config": _weights(bits, granularity),
        "compute_precision": "INTEGER",
        "explicit_dequantize": False,
    }


def _static(activation_bits):
    # int8 activations are asymmetric, int16 symmetric (what LiteRT's kernels take).
    activations = {
        "num_bits": activation_bits,
        "symmetric": activation_bits == 16,
        "granularity": "TENSORWISE",
        "dtype": "INT",
    }
    return {
        "activation_tensor_config": activations,
        "weight_tensor_config": _weights(8),
        "compute_precision": "INTEGER",
        "explicit_dequantize": False,
    }


def static_rule(activation_bits, operation="*", regex=".*"):
    """One rule: int8 weights and ``activation_bits`` (8 or 16) static activations
    for the ops ``operation`` (a LiteRT op name, ``"*"`` for all) whose scope
    matches ``regex``.

    Example:

    >>> rule = static_rule(16, operation="SOFTMAX")
    >>> rule["operation"], rule["op_config"]["activation_tensor_config"]["num_bits"]
    ('SOFTMAX', 16)
    """
    if activation_bits not in (8, 16):
        raise ValueError(f"`activation_bits` must be 8 or 16; got {activation_bits!r}.")
    return _rule(_static(activation_bits), operation=operation, regex=regex)


FLOAT_IO_RULES = (_keep_float("INPUT"), _keep_float("OUTPUT"))

RECIPES = {
    "weight_only_int8": [_rule(_weight_only(8))],
    # Channelwise: the quantizer's policy allows blocks only with integer
    # compute; forced onto weight-only ops they gave wrong outputs.
    "weight_only_int4": [_rule(_weight_only(4))],
    "dynamic_int8": [_rule(_dynamic(8))],
    # int4 in blocks of 32 input channels on the fully connected layers
    # (channelwise where the input width is not a multiple of 32, see
    # blockwise_fallbacks), int8 on the convolutions.
    "dynamic_int4_blockwise": [
        _rule(_dynamic(8)),
        _rule(_dynamic(4, "BLOCKWISE_32"), operation="FULLY_CONNECTED"),
    ],
    "static_int8": [_rule(_static(8))],
    "static_int16": [_rule(_static(16))],
    # Static int8 except what breaks it in a ViT (measured, docs/export.md):
    # LayerNorm (its RSQRT turns an int8 variance into noise; RSQRT is kept
    # float on its own too, for a LayerNorm the name pattern misses), the
    # attention softmax, GELU and the covariance head's square root.
    "mixed": [
        _rule(_static(8)),
        _keep_float("SOFTMAX"),
        _keep_float("GELU"),
        _keep_float("RSQRT"),
        _keep_float(regex=LAYER_NORM_SCOPE),
        _keep_float(regex=COVARIANCE_SCOPE),
    ],
    # Static int8 on the ops that hold the weights (fully connected layers,
    # the patch embedding) and float everywhere else: every op it quantizes
    # runs in XNNPACK's int8 kernels, while the attention products, softmax,
    # LayerNorm, GELU and residual adds (which "mixed" and "static_int8" put
    # in int8, outside XNNPACK) stay float. On the photo model (docs/export.md)
    # the fastest mode on 2 threads (on 1 as fast as dynamic_int8), and
    # within a point of float with thresholds calibrated on its outputs.
    "int8_matmuls": [_rule(_static(8), operation="FULLY_CONNECTED"), _rule(_static(8), operation="CONV_2D")],
}
assert tuple(RECIPES) == QUANTIZER_RECIPES  # the manifest schema lists the same names

QuantizedGraph = collections.namedtuple("QuantizedGraph", ["flatbuffer", "recipe"])
QuantizedGraph.__doc__ = """A quantized ``.tflite`` (bytes) and the recipe applied to it (a list of rules)."""


def _litert_quantizer(purpose):
    return require("litert_quantizer", "quantize", purpose)


def named_recipe(name):
    """The recipe of a named quantizer mode, float32 inputs and outputs included.

    Args:
        name: one of ``RECIPES`` (``"weight_only_int8"``, ``"weight_only_int4"``,
            ``"dynamic_int8"``, ``"dynamic_int4_blockwise"``, ``"static_int8"``,
            ``"static_int16"``, ``"mixed"``).

    Returns:
        A new list of rule dicts (JSON-serialisable).

    Example:

    >>> recipe = named_recipe("mixed")
    >>> [(rule["operation"], rule["algorithm_key"]) for rule in recipe][:3]
    [('*', 'min_max_uniform_quantize'), ('SOFTMAX', 'no_quantize'), ('GELU', 'no_quantize')]
    >>> recipe[-2:] == [{"regex": ".*", "operation": op, "algorithm_key": "no_quantize"}
    ...                 for op in ("INPUT", "OUTPUT")]
    True
    """
    if name not in RECIPES:
        raise ValueError(f"`name` must be one of {tuple(RECIPES)}; got {name!r}.")
    return with_float_io(RECIPES[name])


def with_float_io(recipe):
    """``recipe`` (copied) with the rules that keep graph inputs and outputs float32 last."""
    recipe = copy.deepcopy(list(recipe))
    return recipe + [dict(rule) for rule in FLOAT_IO_RULES if rule not in recipe[-2:]]


def check_recipe(recipe, argument="quantization"):
    """Check a user's recipe and return it as a list of plain rule dicts.

    Each rule is a dict with ``regex`` (a Python regular expression searched
    in an op's scope), ``operation`` (a LiteRT op name such as
    ``"FULLY_CONNECTED"``, ``"*"`` for every op, or ``"INPUT"`` /
    ``"OUTPUT"``), ``algorithm_key`` (``"min_max_uniform_quantize"``,
    ``"no_quantize"``, ...) and ``op_config`` (the precision; not needed with
    ``"no_quantize"``). Each rule is also loaded into the quantizer's own
    recipe manager, so what it refuses fails here, before any conversion.

    Args:
        recipe: a list of rules (a recipe JSON file, loaded).
        argument: the argument's name for error messages.

    Returns:
        The recipe as a new list of JSON-serialisable dicts.

    Raises:
        ValueError: naming ``argument``, the rule and what is expected.
        ImportError: without ``litert-quantizer`` (the ``quantize`` extra).

    Example:

    >>> recipe = check_recipe([{"regex": ".*", "operation": "FULLY_CONNECTED",
    ...                         "algorithm_key": "min_max_uniform_quantize",
    ...                         "op_config": {"weight_tensor_config": {"num_bits": 8},
    ...                                       "compute_precision": "FLOAT",
    ...                                       "explicit_dequantize": True}}])
    >>> recipe[0]["operation"]
    'FULLY_CONNECTED'
    >>> check_recipe([{"regex": ".*", "operation": "FC", "algorithm_key": "no_quantize"}])
    Traceback (most recent call last):
    ValueError: `quantization[0]['operation']` must be '*' or a LiteRT op name such as 'FULLY_CONNECTED'; got 'FC'.
    """
    _litert_quantizer(f"A `{argument}` recipe")
    from litert_quantizer import algorithm_manager, qtyping, recipe_manager

    if isinstance(recipe, (str, bytes, dict)) or not isinstance(recipe, (list, tuple)) or not recipe:
        raise ValueError(
            f"`{argument}` as a recipe must be a non-empty list of rule dicts "
            f'{{"regex", "operation", "algorithm_key", "op_config"}}; got {_short(recipe)}.'
        )
    try:
        recipe = json.loads(json.dumps(list(recipe)))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`{argument}` must be JSON-serialisable (it is written into the manifest): {error}."
        ) from None
    operations = {op.value for op in qtyping.TFLOperationName}
    algorithms = {a.value for a in algorithm_manager.AlgorithmName}
    for i, rule in enumerate(recipe):
        at = f"`{argument}[{i}]`"
        if not isinstance(rule, dict):
            raise ValueError(f"{at} must be a dict (one rule); got {_short(rule)}.")
        unknown = sorted(set(rule) - {"regex", "operation", "algorithm_key", "op_config"})
        if unknown:
            raise ValueError(
                f"{at} has unknown key {unknown[0]!r}; a rule has 'regex', 'operation', 'algorithm_key', 'op_config'."
            )
        for key in ("regex", "operation", "algorithm_key"):
            if not isinstance(rule.get(key), str):
                raise ValueError(f"`{argument}[{i}][{key!r}]` must be a string; got {_short(rule.get(key))}.")
        try:
            re.compile(rule["regex"])
        except re.error as error:
            raise ValueError(
                f"`{argument}[{i}]['regex']` must be a Python regular expression; got {rule['regex']!r} ({error})."
            ) from None
        if rule["operation"] not in operations:
            raise ValueError(
                f"`{argument}[{i}]['operation']` must be '*' or a LiteRT op name such as "
                f"'FULLY_CONNECTED'; got {rule['operation']!r}."
            )
        if rule["algorithm_key"] not in algorithms:
            raise ValueError(
                f"`{argument}[{i}]['algorithm_key']` must be one of {sorted(algorithms)}; "
                f"got {rule['algorithm_key']!r}."
            )
        if rule["algorithm_key"] != KEEP_FLOAT and not isinstance(rule.get("op_config"), dict):
            raise ValueError(
                f"`{argument}[{i}]['op_config']` must be a dict (the precision) unless the rule is "
                f"'no_quantize'; got {_short(rule.get('op_config'))}."
            )
        try:
            recipe_manager.RecipeManager().load_quantization_recipe([rule])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{at} is refused by the LiteRT quantizer: {error!r}.") from None
    return recipe


def needs_calibration(recipe):
    """Whether ``recipe`` quantizes activations statically (needs calibration data).

    The quantizer's own rule: integer compute with an activation config.

    Example:

    >>> needs_calibration(named_recipe("static_int8")), needs_calibration(named_recipe("dynamic_int8"))
    (True, False)
    """
    _litert_quantizer("Reading a quantization recipe")
    from litert_quantizer import recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    return bool(manager.need_calibration())


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def blockwise_fallbacks(flatbuffer, recipe):
    """Rules that make the blockwise ops of ``recipe`` channelwise where blocks do not fit.

    A block of ``n`` input channels needs a weight whose input width is a
    multiple of ``n``; the quantizer stops with an error otherwise (the
    adapters' 16-wide bottlenecks and the covariance classifier's 528
    inputs against blocks of 32). One rule per such op, its scope matched
    exactly (output tensor names are unique), same bits, channelwise.

    Args:
        flatbuffer: the float ``.tflite`` (bytes).
        recipe: the recipe about to be applied.

    Returns:
        A list of rules (empty when nothing needs one).

    Example:

    >>> blockwise_fallbacks(b"", named_recipe("dynamic_int8"))   # no blockwise rule
    []
    """
    if not any(_block_size((r.get("op_config") or {}).get("weight_tensor_config")) for r in recipe):
        return []
    _litert_quantizer("Blockwise quantization")
    from litert_quantizer import recipe_manager
    from litert_quantizer.utils import tfl_flatbuffer_utils as flatbuffer_utils

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    model = flatbuffer_utils.read_model(bytearray(flatbuffer))
    rules = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            op_name = flatbuffer_utils.TFL_OP_CODE_TO_NAME.get(
                model.operatorCodes[op.opcodeIndex].builtinCode
            )
            if op_name is None or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            scope = flatbuffer_utils.get_op_scope(op, subgraph.tensors)
            algorithm, config = manager.get_quantization_configs(op_name, scope)
            weights = config.weight_tensor_config
            block = _block_size(None if weights is None else weights.to_dict())
            width = subgraph.tensors[op.inputs[1]].shape
            if block and len(width) and width[-1] % block:
                op_config = json.loads(json.dumps(config.to_dict()))
                op_config["weight_tensor_config"]["granularity"] = "CHANNELWISE"
                op_config["weight_tensor_config"].pop("block_size", None)
                rules.append(
                    {
                        "regex": "^" + re.escape(scope),
                        "operation": _value(op_name),
                        "algorithm_key": _value(algorithm),
                        "op_config": op_config,
                    }
                )
    return rules


def _value(name):
    """The string of one of the quantizer's str enums (or a plain string)."""
    return getattr(name, "value", name)


def _block_size(weight_config):
    granularity = str((weight_config or {}).get("granularity", ""))
    match = re.fullmatch(r"(?:QuantGranularity\.)?BLOCKWISE_(\d+)", granularity)
    return int(match.group(1)) if match else 0


def quantize_flatbuffer(flatbuffer, recipe, calibration_inputs=None, what="the graph"):
    """Apply a LiteRT quantizer recipe to a float32 ``.tflite``.

    Args:
        flatbuffer: the float32 graph (bytes), one signature with one input.
        recipe: a list of rules (``named_recipe`` or ``check_recipe``).
            The float32 input/output rules and, for blockwise rules, the
            channelwise fallbacks are appended (``QuantizedGraph.recipe``
            holds the recipe as applied).
        calibration_inputs: for a recipe with static activations: an array
            ``(N, ...)`` of what the graph's input sees (model-space images
            for stage 1, the previous stage's tokens after it), fed
            ``CALIBRATION_BATCH`` at a time (one at a time to a batch-1
            graph; the ranges are the extremes over all of them either
            way, see ``calibrate``).
        what: the graph's name for error messages.

    Returns:
        A ``QuantizedGraph(flatbuffer, recipe)``.

    Raises:
        ValueError: a static recipe without ``calibration_inputs``.
        RuntimeError: when the quantizer fails on this graph.
        ImportError: without ``litert-quantizer`` (the ``quantize`` extra).

    Example (TensorFlow backend, for the float graph):

    >>> from keras_dmpo.export.tflite_convert import convert_to_tflite
    >>> inputs = keras.Input((64,), name="x")
    >>> model = keras.Model(inputs, {"y": keras.layers.Dense(64)(inputs)})
    >>> graph = quantize_flatbuffer(convert_to_tflite(model), named_recipe("weight_only_int8"))
    >>> graph.flatbuffer[4:8], len(graph.flatbuffer) < len(convert_to_tflite(model))
    (b'TFL3', True)
    """
    _litert_quantizer("LiteRT quantizer modes")
    from litert_quantizer import quantizer as litert_quantizer

    applied = with_float_io(recipe)
    applied += blockwise_fallbacks(flatbuffer, applied)
    static = needs_calibration(applied)
    if static and calibration_inputs is None:
        raise ValueError(
            f"The recipe for {what} quantizes activations statically: it needs `calibration_inputs`; got None."
        )
    signature, input_name, batch = graph_signature(flatbuffer)
    try:
        with warnings.catch_warnings():
            # The quantizer's interpreters keep every tensor, which LiteRT warns is for debugging.
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            quantizer = litert_quantizer.Quantizer(bytearray(flatbuffer), applied)
            calibration = None
            if static:
                step = CALIBRATION_BATCH if batch == -1 else 1
                samples = [
                    {input_name: calibration_inputs[i : i + step]}
                    for i in range(0, len(calibration_inputs), step)
                ]
                calibration = calibrate(flatbuffer, applied, {signature: samples})
            result = quantizer.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    except (ValueError, KeyError, RuntimeError) as error:
        raise RuntimeError(f"The LiteRT quantizer failed on {what}: {error}") from error
    quantized = repair_signature(result.quantized_model)
    _check_float_io(quantized, what)
    return QuantizedGraph(quantized, applied)


def calibrate(flatbuffer, recipe, samples):
    """Activation ranges of a float graph for ``recipe``: each tensor's min and
    max over every calibration sample.

    The quantizer's default keeps a moving average (0.95 on the past) of the
    extremes of each invoke, which depends on how the images are batched: on
    the tiny test ViT, one image per invoke (what a batch-1 web graph allows)
    gave max |dp| 0.35-0.46 against 0.13 for batches of 8, while the plain
    extremes gave 0.11-0.12 either way (docs/export.md). The converter's int8
    calibrates the same way. Recipes with other algorithms (GPTQ, ...) keep
    the quantizer's own update.

    Args:
        flatbuffer: the float graph (bytes).
        recipe: the recipe as applied.
        samples: ``{signature key: [{input name: batch}, ...]}``.

    Returns:
        The calibration result for ``Quantizer.quantize``.

    Example (TensorFlow backend, for the graph):

    >>> from keras_dmpo.export.tflite_convert import convert_to_tflite
    >>> inputs = keras.Input((4,), name="x")
    >>> graph = convert_to_tflite(keras.Model(inputs, {"y": keras.layers.Dense(2)(inputs)}))
    >>> x = np.array([[0, 1, 2, 3], [-5, 0, 0, 9]], "float32")
    >>> ranges = calibrate(graph, named_recipe("static_int8"), {"serving_default": [{"x": x[:1]}, {"x": x[1:]}]})
    >>> float(ranges["serving_default_x:0"]["min"].min()), float(ranges["serving_default_x:0"]["max"].max())
    (-5.0, 9.0)
    """
    _litert_quantizer("Calibrating a quantization recipe")
    from litert_quantizer import calibrator, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    plain = all(rule["algorithm_key"] in (ALGORITHM, KEEP_FLOAT) for rule in recipe)
    options = {"qsv_update_func": _running_extremes} if plain else {}
    with warnings.catch_warnings():
        # The calibrator's interpreter keeps every tensor, which LiteRT warns is for debugging.
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        graph_calibrator = calibrator.Calibrator(
            bytearray(flatbuffer), num_threads=os.cpu_count() or 1, **options
        )
        graph_calibrator.calibrate(samples, manager)
    return graph_calibrator.get_model_qsvs()


def _running_extremes(old, new):
    return {**new, "min": np.minimum(old["min"], new["min"]), "max": np.maximum(old["max"], new["max"])}


def repair_signature(flatbuffer):
    """Two fixes to what the quantizer writes, both about the QUANTIZE /
    DEQUANTIZE ops it inserts (for instance where a graph output stays
    float32 but its producer runs in int8):

    - the tensors they write have no shape signature, so the graph's
      signature reports a batch of 1 where the float graph had -1 (the graph
      still resizes, but the manifest and StagedRuntime read the signature).
      The input's signature is copied: these ops keep the shape.
    - when such a tensor replaces a graph output, the subgraph's output list
      is updated but the signature still names the int8 tensor (seen with
      "mixed": the tokens output feeds float LayerNorms and the output). The
      signature is pointed at the graph output its DEQUANTIZE writes.
    - the other way round, the subgraph's output list names the int8 tensor
      a QUANTIZE writes from a float graph output, while the signature names
      the float one, which LiteRT then does not keep ("Tensor data is null";
      seen at a fixed batch with only the fully connected layers in int8:
      the tokens feed the next block's int8 layer and leave the graph). The
      output list is pointed back at the float tensor.

    Returns the repaired flatbuffer (bytes); ``quantize_flatbuffer`` applies it.

    Example (a float graph has nothing to repair):

    >>> from keras_dmpo.export.tflite_convert import convert_to_tflite
    >>> inputs = keras.Input((4,), name="x")
    >>> graph = convert_to_tflite(keras.Model(inputs, {"y": keras.layers.Dense(2)(inputs)}))
    >>> repair_signature(graph) == graph
    True
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    # Reads buffers stored after the flatbuffer (the quantizer writes models
    # with more than 256 KB of weights that way) into the model, so that
    # packing it again keeps them.
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    changed = False
    for index, subgraph in enumerate(model.subgraphs):
        dequantized = {}  # input tensor -> the graph output a DEQUANTIZE writes from it
        quantized = {}  # a graph output a QUANTIZE writes -> its float input
        for op in subgraph.operators:
            code = flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
            if code not in (schema.BuiltinOperator.QUANTIZE, schema.BuiltinOperator.DEQUANTIZE):
                continue
            if len(op.inputs) != 1 or len(op.outputs) != 1:
                continue
            source, target = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.outputs[0]]
            if target.shapeSignature is None and source.shapeSignature is not None:
                if list(source.shape) == list(target.shape):
                    target.shapeSignature = list(source.shapeSignature)
                    changed = True
            if code == schema.BuiltinOperator.DEQUANTIZE and op.outputs[0] in list(subgraph.outputs):
                dequantized[op.inputs[0]] = op.outputs[0]
            if (
                code == schema.BuiltinOperator.QUANTIZE
                and op.outputs[0] in list(subgraph.outputs)
                and source.type == schema.TensorType.FLOAT32
            ):
                quantized[op.outputs[0]] = op.inputs[0]
        signatures = [s for s in model.signatureDefs or [] if s.subgraphIndex == index]
        named = {output.tensorIndex for s in signatures for output in s.outputs}
        # Only where the signature names the float tensor and not its int8 copy.
        quantized = {t: f for t, f in quantized.items() if f in named and t not in named}
        if quantized:
            outputs = []
            for tensor in subgraph.outputs:
                tensor = quantized.get(tensor, tensor)
                if tensor not in outputs:
                    outputs.append(tensor)
            subgraph.outputs = outputs
            changed = True
        for signature in signatures:
            for output in signature.outputs:
                if output.tensorIndex in dequantized:
                    output.tensorIndex = dequantized[output.tensorIndex]
                    changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else bytes(flatbuffer)


def _check_float_io(flatbuffer, what):
    """The graph's signature takes and gives float32 only (what the runtime feeds and reads)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(flatbuffer))
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        for kind, details in (("input", runner.get_input_details()), ("output", runner.get_output_details())):
            for name, detail in details.items():
                if detail["dtype"] != np.float32:
                    raise RuntimeError(
                        f"The quantized {what} has {kind} {name!r} of dtype {np.dtype(detail['dtype']).name}; "
                        "graph inputs and outputs must stay float32 (the recipe's INPUT/OUTPUT rules)."
                    )


def graph_signature(flatbuffer):
    """Signature key, input name and batch dimension (-1: dynamic) of a one-input graph.

    Example (TensorFlow backend, for the graph):

    >>> from keras_dmpo.export.tflite_convert import convert_to_tflite
    >>> inputs = keras.Input((4,), name="x")
    >>> graph_signature(convert_to_tflite(keras.Model(inputs, {"y": keras.layers.Dense(2)(inputs)})))
    ('serving_default', 'x', -1)
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(flatbuffer))
    (key,) = interpreter.get_signature_list()
    (name, detail), *rest = interpreter.get_signature_runner(key).get_input_details().items()
    if rest:
        raise ValueError(f"Expected a graph with one input; it has {[name] + [n for n, _ in rest]}.")
    return key, name, int(detail["shape_signature"][0])


def quantizer_version():
    """``"litert-quantizer X.Y.Z"``, recorded in the manifest (``quantization_tool``)."""
    from importlib.metadata import version

    return f"litert-quantizer {version('litert-quantizer')}"
