"""Where quantization breaks a graph: per-op-type errors of a quantized ``.tflite``.

Two views of a float32 graph and its quantized copy, for choosing a recipe
(``benchmarks/quantization_analysis.py`` prints both):

- ``errors_by_op_type``: the LiteRT quantizer's own per-tensor validation
  (both graphs run side by side on the same inputs, every intermediate
  tensor compared), summarised per op type. An op's *drop* is the SNR of
  its worst activation input minus that of its output: what the op itself
  loses, rather than what reached it.
- ``op_type_sensitivity``: one op type (or one named scope, such as every
  LayerNorm) at a time in static integer precision, the rest float; the
  error this leaves on the graph's outputs. Errors do not add up across ops,
  so this, not the drop, says which ops a recipe should keep in float.

SNR is ``10 log10(sum(x^2) / sum((x_q - x)^2))`` in dB (the quantizer's
ratio, averaged over the input batches, then in dB).
"""

import collections
import math
import re
import warnings

import numpy as np

from keras_dmpo.export import quantizer
from keras_dmpo.optional_deps import require

# A tensor this close to the float one (noise power 1% of the signal's) is
# clean; an op that turns clean inputs into a noisier output *breaks* there.
CLEAN_DB = 20.0
# Named scopes of ``op_type_sensitivity``, next to the op types.
SCOPES = {
    "LayerNorm (scope)": quantizer.LAYER_NORM_SCOPE,
    "covariance pooling (scope)": quantizer.COVARIANCE_SCOPE,
}


def _db(ratio):
    return 10 * math.log10(max(ratio, 1e-12))


GraphOp = collections.namedtuple("GraphOp", ["name", "scope", "outputs", "activations", "computes_floats"])


def _graph_ops(flatbuffer):
    """The ops of a ``.tflite``'s main graph in order: type, scope, output
    tensor names, activation (non-constant) input names, and whether it
    writes float tensors (shape and index computations write int32 and are
    never quantized)."""
    require("litert_quantizer", "quantize", "Quantization reports")
    from ai_edge_litert import schema_py_generated as schema
    from litert_quantizer.utils import tfl_flatbuffer_utils as flatbuffer_utils

    model = flatbuffer_utils.read_model(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    ops = []
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex].builtinCode
        name = getattr(flatbuffer_utils.TFL_OP_CODE_TO_NAME.get(code), "value", None)
        if name is None:  # an op the quantizer has no name for
            name = next((k for k, v in vars(schema.BuiltinOperator).items() if v == code), str(code))
        tensors = [subgraph.tensors[i] for i in op.outputs if i >= 0]
        activations = [
            flatbuffer_utils.get_tensor_name(subgraph.tensors[i])
            for i in op.inputs
            if i >= 0 and model.buffers[subgraph.tensors[i].buffer].data is None
        ]
        ops.append(
            GraphOp(
                name,
                flatbuffer_utils.get_op_scope(op, subgraph.tensors),
                [flatbuffer_utils.get_tensor_name(t) for t in tensors],
                activations,
                any(t.type == schema.TensorType.FLOAT32 for t in tensors),
            )
        )
    return ops


def op_type_counts(flatbuffer):
    """``{op type: count}`` of a ``.tflite``'s main graph, most frequent first.

    Example (TensorFlow backend, for the graph):

    >>> from keras_dmpo.export.tflite_convert import convert_to_tflite
    >>> inputs = keras.Input((8,), name="x")
    >>> model = keras.Model(inputs, {"y": keras.layers.Dense(4, activation="softmax")(inputs)})
    >>> op_type_counts(convert_to_tflite(model))
    {'FULLY_CONNECTED': 1, 'SOFTMAX': 1}
    """
    counts = collections.Counter(op.name for op in _graph_ops(flatbuffer))
    return dict(counts.most_common())


def _batches(inputs, batch):
    return [inputs[i : i + batch] for i in range(0, len(inputs), batch)]


def tensor_errors(float_flatbuffer, quantized_flatbuffer, inputs, batch=8):
    """The LiteRT quantizer's per-tensor validation of a quantized graph.

    Args:
        float_flatbuffer, quantized_flatbuffer: the two graphs (bytes), one
            signature with one input.
        inputs: ``(N, ...)`` array fed to both, ``batch`` at a time.
        batch: inputs per invoke.

    Returns:
        ``{tensor name: {"snr_db": ..., "cosine_similarity": ...}}`` for
        every tensor both graphs hold (but all-zero ones).

    Example (TensorFlow backend, for the graph):

    >>> from keras_dmpo.export.tflite_convert import convert_to_tflite
    >>> inputs = keras.Input((64,), name="x")
    >>> model = keras.Model(inputs, {"y": keras.layers.Dense(64)(inputs)})
    >>> graph = convert_to_tflite(model)
    >>> quantized = quantizer.quantize_flatbuffer(graph, quantizer.named_recipe("weight_only_int8"))
    >>> errors = tensor_errors(graph, quantized.flatbuffer, np.random.rand(4, 64).astype("float32"))
    >>> min(e["snr_db"] for e in errors.values()) > 30   # int8 weights: > 30 dB everywhere
    True
    """
    require("litert_quantizer", "quantize", "Quantization reports")
    from litert_quantizer import quantizer as litert_quantizer

    signature, name, _ = quantizer.graph_signature(float_flatbuffer)
    metrics = [
        litert_quantizer.ValidationErrorMetric.SNR,
        litert_quantizer.ValidationErrorMetric.COSINE_SIMILARITY,
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        checker = litert_quantizer.Quantizer(
            bytearray(float_flatbuffer), previous_quantized_model=bytearray(quantized_flatbuffer)
        )
        result = checker.validate(
            {signature: [{name: b} for b in _batches(inputs, batch)]}, error_metrics=metrics
        )
    # An SNR of exactly 0 is a tensor without signal (all zeros in the float
    # graph, e.g. the output of a zero-initialised adapter): left out.
    return {
        tensor: {"snr_db": _db(values["snr"]), "cosine_similarity": float(values["cosine_similarity"])}
        for tensor, values in result.get_all_tensor_results().items()
        if values["snr"] > 0
    }


def errors_by_op_type(float_flatbuffer, errors):
    """``tensor_errors`` per op type: what each kind of op loses.

    Args:
        float_flatbuffer: the float graph ``errors`` were measured on.
        errors: ``tensor_errors(...)``.

    Returns:
        Rows ``{"op", "count", "breaks", "median_output_snr_db",
        "worst_output_snr_db", "median_drop_db", "max_drop_db",
        "worst_scope"}`` (shape computations left out): ``breaks`` counts
        the ops of that type whose inputs were all clean (``CLEAN_DB``) and
        whose output is not -- where the error starts, since every op after
        the first break only passes noise on. Most breaks first, then the
        largest drop; ``worst_scope`` is the op with the largest drop.

    Example (TensorFlow backend, for the graph):

    >>> from keras_dmpo.export.tflite_convert import convert_to_tflite
    >>> inputs = keras.Input((64,), name="x")
    >>> model = keras.Model(inputs, {"y": keras.layers.Dense(8, activation="softmax")(inputs)})
    >>> graph = convert_to_tflite(model)
    >>> x = np.random.rand(16, 64).astype("float32")
    >>> quantized = quantizer.quantize_flatbuffer(graph, quantizer.named_recipe("static_int8"), x)
    >>> rows = errors_by_op_type(graph, tensor_errors(graph, quantized.flatbuffer, x))
    >>> sorted(row["op"] for row in rows)
    ['FULLY_CONNECTED', 'SOFTMAX']
    """
    rows = collections.defaultdict(list)
    for op in _graph_ops(float_flatbuffer):
        measured = [errors[t]["snr_db"] for t in op.outputs if t in errors]
        if not op.computes_floats or not measured:
            continue
        upstream = [errors[t]["snr_db"] for t in op.activations if t in errors]
        out = min(measured)
        drop = (min(upstream) - out) if upstream else 0.0
        breaks = bool(upstream) and min(upstream) >= CLEAN_DB > out
        rows[op.name].append((out, drop, op.scope, breaks))
    summary = []
    for name, values in rows.items():
        outs = np.array([v[0] for v in values])
        drops = np.array([v[1] for v in values])
        worst = values[int(np.argmax(drops))]
        summary.append(
            {
                "op": name,
                "count": len(values),
                "breaks": sum(v[3] for v in values),
                "median_output_snr_db": float(np.median(outs)),
                "worst_output_snr_db": float(outs.min()),
                "median_drop_db": float(np.median(drops)),
                "max_drop_db": float(drops.max()),
                "worst_scope": worst[2].split(";")[0],
            }
        )
    return sorted(summary, key=lambda row: (-row["breaks"], -row["max_drop_db"]))


def _run(flatbuffer, inputs, batch=32):
    from ai_edge_litert.interpreter import Interpreter

    signature, name, _ = quantizer.graph_signature(flatbuffer)
    runner = Interpreter(model_content=bytes(flatbuffer)).get_signature_runner(signature)
    chunks = [runner(**{name: b}) for b in _batches(inputs, batch)]
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def output_agreement(reference, outputs):
    """SNR (dB) of every output, and for ``probabilities`` the max |dp| and
    the fraction of inputs with the same argmax.

    Example:

    >>> p = np.array([[0.9, 0.1], [0.4, 0.6]], "float32")
    >>> row = output_agreement({"probabilities": p}, {"probabilities": p[:, ::-1]})
    >>> row["same_label"], round(row["max_abs_probability_diff"], 2)
    (0.0, 0.8)
    """
    row = {}
    for key, value in reference.items():
        noise = float(np.square(outputs[key] - value).sum())
        row[f"{key}_snr_db"] = _db(float(np.square(value).sum()) / noise) if noise else float("inf")
    if "probabilities" in reference:
        p, q = reference["probabilities"], outputs["probabilities"]
        row["max_abs_probability_diff"] = float(np.abs(p - q).max())
        row["same_label"] = float(np.mean(p.argmax(-1) == q.argmax(-1)))
    return row


def default_groups(ops):
    """The groups of ``op_type_sensitivity``: every op type that writes
    floats; the same type outside LayerNorms where it occurs in both (the
    residual ADDs apart from LayerNorm's ``variance + epsilon``); and
    ``SCOPES``."""
    outside = rf"^(?!.*{quantizer.LAYER_NORM_SCOPE})"
    names = sorted({op.name for op in ops if op.computes_floats})
    groups = {name: (name, ".*") for name in names}
    for name in names:
        scopes = [op.scope for op in ops if op.name == name]
        inside = sum(1 for scope in scopes if re.search(quantizer.LAYER_NORM_SCOPE, scope))
        if 0 < inside < len(scopes):
            groups[f"{name} outside LayerNorm"] = (name, outside)
    groups.update({label: ("*", regex) for label, regex in SCOPES.items()})
    return groups


def op_type_sensitivity(float_flatbuffer, calibration_inputs, test_inputs, activation_bits=8, groups=None):
    """Each op type (and each of ``SCOPES``) alone in static integer precision.

    Calibrates once (every tensor's range), then for each group quantizes
    only its ops (int8 weights, ``activation_bits`` activations) with float
    inputs and outputs, and compares the graph's outputs with the float
    graph's on ``test_inputs``.

    Args:
        float_flatbuffer: a float32 graph (bytes) with one input.
        calibration_inputs: ``(N, ...)`` what its input sees.
        test_inputs: ``(M, ...)`` inputs to compare on.
        activation_bits: 8 or 16.
        groups: ``{label: (operation, regex)}``; default ``default_groups``.

    Returns:
        Rows ``{"group", "ops", "quantized", **output_agreement}``, worst
        first (lowest SNR of ``probabilities``, else of the first output);
        ``quantized`` is False where the quantizer left the graph unchanged
        (no static kernel for that op) or refused (``"error"``).

    Example (TensorFlow backend, for the graph):

    >>> from keras_dmpo.export.tflite_convert import convert_to_tflite
    >>> inputs = keras.Input((64,), name="x")
    >>> model = keras.Model(inputs, {"probabilities": keras.layers.Dense(8, activation="softmax")(inputs)})
    >>> x = np.random.rand(24, 64).astype("float32")
    >>> rows = op_type_sensitivity(convert_to_tflite(model), x[:16], x[16:])
    >>> sorted((row["group"], row["ops"], row["quantized"]) for row in rows)  # doctest: +NORMALIZE_WHITESPACE
    [('FULLY_CONNECTED', 1, True), ('LayerNorm (scope)', 0, False), ('SOFTMAX', 1, True),
     ('covariance pooling (scope)', 0, False)]
    """
    require("litert_quantizer", "quantize", "Quantization reports")
    from litert_quantizer import quantizer as litert_quantizer

    rule = quantizer.static_rule(activation_bits)  # checks activation_bits
    ops = _graph_ops(float_flatbuffer)
    if groups is None:
        groups = default_groups(ops)
    signature, name, batch = quantizer.graph_signature(float_flatbuffer)
    step = quantizer.CALIBRATION_BATCH if batch == -1 else 1
    reference = _run(float_flatbuffer, test_inputs)
    rows = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        samples = {signature: [{name: b} for b in _batches(calibration_inputs, step)]}
        ranges = quantizer.calibrate(float_flatbuffer, quantizer.with_float_io([rule]), samples)
        for label, (operation, regex) in groups.items():
            count = sum(1 for op in ops if operation in ("*", op.name) and re.search(regex, op.scope))
            recipe = quantizer.with_float_io([quantizer.static_rule(activation_bits, operation, regex)])
            try:
                result = litert_quantizer.Quantizer(bytearray(float_flatbuffer), recipe).quantize(
                    ranges, enable_progress_bar=False, enable_progress_report=False
                )
            except (ValueError, KeyError, RuntimeError) as error:
                rows.append({"group": label, "ops": count, "quantized": False, "error": str(error)[:200]})
                continue
            graph = quantizer.repair_signature(result.quantized_model)
            if graph == bytes(float_flatbuffer) or not count:
                rows.append({"group": label, "ops": count, "quantized": False})
                continue
            outputs = _run(graph, test_inputs)
            rows.append(
                {"group": label, "ops": count, "quantized": True, **output_agreement(reference, outputs)}
            )

    def badness(row):
        if not row["quantized"]:
            return float("inf")
        return row.get("probabilities_snr_db", next(v for k, v in row.items() if k.endswith("_snr_db")))

    return sorted(rows, key=badness)


def xnnpack_delegation(flatbuffer, num_threads=1, batch_size=1):
    """Which ops of a ``.tflite`` LiteRT's default XNNPACK delegate runs,
    and which fall back to LiteRT's own kernels, per op type.

    An op XNNPACK refuses splits the delegated graph in two; every
    partition boundary and every fallback kernel costs time (the reason a
    graph runs far from the machine's peak). Read from the interpreter's
    node list after the delegate is applied: each delegate node's
    partition is the set of original ops between its input and output
    tensors. Uses LiteRT's private ``_get_ops_details`` (ai-edge-litert 2.x).

    Args:
        flatbuffer: the ``.tflite`` bytes.
        num_threads: the interpreter's threads.
        batch_size: the batch the input is resized to first. A graph
            converted with a dynamic batch computes its reshapes at run time
            (SHAPE, GATHER, PACK... ops that XNNPACK leaves out); a
            fixed-batch export (``web=True``) has them folded away.

    Returns:
        ``{"partitions": n, "delegated": n, "not_delegated": n, "by_op":
        {op: {"delegated": n, "not_delegated": n}}}``, ops with fallbacks
        first.

    Example (TensorFlow backend, for the graph):

    >>> from keras_dmpo.export.tflite_convert import convert_to_tflite
    >>> inputs = keras.Input((8,), name="x")
    >>> model = keras.Model(inputs, {"y": keras.layers.Dense(4, activation="softmax")(inputs)})
    >>> report = xnnpack_delegation(convert_to_tflite(model))
    >>> report["partitions"], report["not_delegated"]
    (1, 0)
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(flatbuffer), num_threads=num_threads)
    for detail in interpreter.get_input_details():
        shape = [batch_size] + [int(d) for d in detail["shape_signature"][1:]]
        interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {int(t): op["index"] for op in originals for t in op["outputs"]}
    delegated = set()
    for delegate in delegates:
        boundary = {int(t) for t in delegate["inputs"]}
        pending, seen = [int(t) for t in delegate["outputs"]], set()
        while pending:
            tensor = pending.pop()
            if tensor in boundary or tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            index = producer[tensor]
            delegated.add(index)
            pending.extend(int(t) for t in ops[index]["inputs"] if t >= 0)
    by_op = collections.defaultdict(lambda: {"delegated": 0, "not_delegated": 0})
    for op in originals:
        by_op[op["op_name"]]["delegated" if op["index"] in delegated else "not_delegated"] += 1
    ordered = sorted(by_op.items(), key=lambda item: (-item[1]["not_delegated"], item[0]))
    return {
        "partitions": len(delegates),
        "delegated": len(delegated),
        "not_delegated": len(originals) - len(delegated),
        "by_op": dict(ordered),
    }


def fallback_summary(delegation):
    """The op types an ``xnnpack_delegation`` report leaves to LiteRT's own
    kernels, as ``"BATCH_MATMUL 16, SOFTMAX 3"`` (most first), or ``"—"``.

    >>> fallback_summary({"by_op": {"SOFTMAX": {"delegated": 0, "not_delegated": 3},
    ...                             "ADD": {"delegated": 4, "not_delegated": 0}}})
    'SOFTMAX 3'
    """
    parts = [f"{op} {n['not_delegated']}" for op, n in delegation["by_op"].items() if n["not_delegated"]]
    return ", ".join(parts) or "—"
