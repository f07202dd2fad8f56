"""Shared checks every keras_dmpo layer goes through (cf. keras-hub's TestCase).

``run_layer_checks`` verifies, for one layer configuration: the output shape,
``compute_output_shape`` and the symbolic (functional) output shape,
``get_config``/``from_config``, a ``.keras`` save/load round trip with equal
outputs (optionally after randomising every weight, so that zero-initialised
branches are exercised too), and on the TensorFlow backend a TFLite conversion with TFLITE_BUILTINS
only whose LiteRT output matches Keras; and the dtype policies
(``check_mixed_precision``: ``mixed_bfloat16`` and ``mixed_float16``, like
keras-hub's ``run_layer_test``).
"""

import os

import keras
import numpy as np


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _to_numpy_list(outputs):
    if isinstance(outputs, dict):
        outputs = [outputs[k] for k in sorted(outputs)]
    return [keras.ops.convert_to_numpy(o) for o in _as_list(outputs)]


def wrap_in_model(layer, input_data):
    """A functional model around ``layer`` with inputs shaped like ``input_data``."""
    inputs = [
        keras.Input(shape=np.shape(x)[1:], name=f"input_{i}") for i, x in enumerate(_as_list(input_data))
    ]
    outputs = layer(*inputs)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs)


MIXED_PRECISION_POLICIES = ("mixed_bfloat16", "mixed_float16")
# Allowed max |mixed - float32| as a multiple of the compute dtype's epsilon
# (2**-8 for bfloat16, 2**-11 for float16) times the output's scale
# (max(1, max |float32 output|)). Measured on the layer tests' inputs: at most
# 1.4 (BypassAdapter), 0 for the layers declared float32 (docs/training.md,
# "Mixed precision").
MIXED_PRECISION_EPSILONS = {"bfloat16": 2.0**-8, "float16": 2.0**-11}
MIXED_PRECISION_FACTOR = 8.0


def run_layer_checks(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    tmp_path,
    tflite=True,
    tflite_atol=1e-4,
    custom_objects=None,
    randomize_weights=False,
    mixed_precision=True,
    mixed_precision_policies=MIXED_PRECISION_POLICIES,
):
    """Run the common checks; returns the layer's output (numpy) for more checks.

    ``randomize_weights=True`` overwrites every weight of the saved model with
    small random values before the round trip and the TFLite comparison:
    layers whose output branch starts at zero (adapters) would otherwise be
    compared on an identity.

    ``mixed_precision=False`` skips ``check_mixed_precision`` (run for every
    policy in ``mixed_precision_policies``).
    """
    layer = layer_cls(**init_kwargs)
    inputs = _as_list(input_data)
    output = layer(*inputs)
    outputs = _to_numpy_list(output)
    expected = expected_output_shape
    expected = expected if isinstance(expected, list) else [expected]
    assert [tuple(o.shape) for o in outputs] == [tuple(e) for e in expected]
    for o in outputs:
        assert np.all(np.isfinite(o)), "non-finite output"
    _check_compute_output_shape(layer, inputs, expected)

    # get_config / from_config give an equivalent layer.
    config = layer.get_config()
    for key, value in init_kwargs.items():
        if key in config and not isinstance(value, (keras.layers.Layer,)):
            assert config[key] == value or (
                isinstance(value, (list, tuple)) and list(config[key]) == list(value)
            ), f"get_config()[{key!r}] = {config[key]!r}, expected {value!r}"
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    # .keras round trip: same outputs after reloading.
    model = wrap_in_model(layer_cls(**init_kwargs), input_data)
    symbolic = [tuple(t.shape)[1:] for t in _as_list(model.outputs)]
    assert symbolic == [tuple(e)[1:] for e in expected], symbolic
    if randomize_weights:
        _randomize(model)
    reference = _to_numpy_list(model(input_data if len(inputs) > 1 else inputs[0]))
    path = os.path.join(str(tmp_path), "layer.keras")
    model.save(path)
    restored = keras.models.load_model(path, custom_objects=custom_objects)
    again = _to_numpy_list(restored(input_data if len(inputs) > 1 else inputs[0]))
    for a, b in zip(reference, again):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)

    if tflite and keras.backend.backend() == "tensorflow":
        check_tflite_parity(model, inputs, reference, atol=tflite_atol)
    if mixed_precision:
        for policy in mixed_precision_policies:
            check_mixed_precision(layer_cls, init_kwargs, input_data, policy)
    return outputs[0] if len(outputs) == 1 else outputs


def check_mixed_precision(layer_cls, init_kwargs, input_data, policy="mixed_bfloat16", factor=None):
    """The layer under a mixed dtype policy, against float32 with the same weights.

    Checks that every variable is float32; that the output (eager and
    symbolic) has the layer's compute dtype, which is the policy's (bfloat16
    or float16) or float32 for a layer declared float32 (it replaces mixed
    policies by float32, as the covariance and exit-head layers do); that it
    is finite and differs from the float32 layer's output by at most
    ``factor`` (default ``MIXED_PRECISION_FACTOR``) x the policy's epsilon x
    max(1, max |float32 output|), the weights randomised so that
    zero-initialised branches count. Inputs already in the
    policy's compute dtype (what a mixed model hands a layer) must work too;
    a float32 layer must then match the float32 reference on the same
    rounded inputs at float32 precision.

    Returns ``{"compute_dtype": ..., "max_abs_diff": ..., "scale": ...}``.
    """
    ops = keras.ops
    standardize = keras.backend.standardize_dtype
    low = keras.dtype_policies.get(policy).compute_dtype
    inputs = _as_list(input_data)
    reference = layer_cls(**{**init_kwargs, "dtype": "float32"})
    reference(*inputs)
    _randomize(reference)
    layer = layer_cls(**{**init_kwargs, "dtype": policy})
    layer(*inputs)
    layer.set_weights(reference.get_weights())

    compute = layer.compute_dtype
    assert compute in (low, "float32"), f"{policy}: compute dtype {compute}"
    bad = [(w.path, standardize(w.dtype)) for w in layer.weights if standardize(w.dtype) != "float32"]
    assert not bad, f"{policy}: variables not float32: {bad}"

    expected = _to_numpy_list(reference(*inputs))
    got = _as_list(layer(*inputs))
    symbolic = _as_list(layer(*[keras.Input(shape=np.shape(x)[1:]) for x in inputs]))
    assert [standardize(o.dtype) for o in got + symbolic] == [compute] * 2 * len(got), (
        f"{policy}: outputs {[standardize(o.dtype) for o in got + symbolic]}, compute dtype {compute}"
    )
    got = [ops.convert_to_numpy(ops.cast(o, "float32")) for o in got]
    scale = max(1.0, max(float(np.max(np.abs(e))) for e in expected))
    diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
    limit = (factor or MIXED_PRECISION_FACTOR) * MIXED_PRECISION_EPSILONS[low] * scale
    for g in got:
        assert np.all(np.isfinite(g)), f"{policy}: non-finite output"
    assert diff <= limit, f"{policy}: max |mixed - float32| = {diff:.3g} > {limit:.3g}"

    # Inputs in the compute dtype, as the previous (mixed) layer outputs them.
    rounded = [ops.cast(x, low) for x in inputs]
    again = _as_list(layer(*rounded))
    assert [standardize(o.dtype) for o in again] == [compute] * len(again)
    again = [ops.convert_to_numpy(ops.cast(o, "float32")) for o in again]
    for g in again:
        assert np.all(np.isfinite(g)), f"{policy}: non-finite output on {low} inputs"
    if compute == "float32":  # computes in float32: the rounding of the inputs is all
        same = _to_numpy_list(reference(*[ops.cast(x, "float32") for x in rounded]))
        for g, e in zip(again, same):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * scale)
    return {"compute_dtype": compute, "max_abs_diff": diff, "scale": scale}


def _check_compute_output_shape(layer, inputs, expected):
    try:
        shape = layer.compute_output_shape(*[tuple(np.shape(x)) for x in inputs])
    except NotImplementedError:
        return
    shapes = shape if isinstance(shape, list) else [shape]
    assert [tuple(s) for s in shapes] == [tuple(e) for e in expected], shapes


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = rng.normal(0.0, 0.2, size=tuple(weight.shape))
        if weight.name == "gamma":  # keep normalisation scales near 1
            value = value + 1.0
        weight.assign(value.astype(keras.backend.standardize_dtype(weight.dtype)))


def check_tflite_parity(model, inputs, reference, atol=1e-4):
    """Convert with TFLITE_BUILTINS only and compare LiteRT with Keras."""
    from keras_dmpo.export.tflite_convert import convert_to_tflite, make_interpreter

    flatbuffer = convert_to_tflite(model)
    interpreter = make_interpreter(model_content=flatbuffer)
    # The default signature, its inputs in order, as float32.
    names = next(iter(interpreter.get_signature_list().values()))["inputs"]
    runner = interpreter.get_signature_runner()
    out = runner(**{n: np.asarray(x, dtype=np.float32) for n, x in zip(names, inputs)})
    got = [out[k] for k in sorted(out)]
    assert len(got) == len(reference)
    # Output names are not ordered like Keras outputs: match by shape and value.
    for ref in reference:
        diffs = [np.max(np.abs(g - ref)) for g in got if tuple(g.shape) == tuple(ref.shape)]
        assert diffs and min(diffs) <= atol, f"LiteRT differs from Keras by {diffs}"
