import keras
import numpy as np
import pytest
from layer_checks import run_layer_checks
from scipy.special import erf

from keras_dmpo.layers import BypassAdapter


def _tokens(shape=(2, 17, 32), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _numpy_bypass(tokens, wd, bd, kernel, bc, wu, bu, scale, grid, prefix=1):
    """Independent reference: explicit loops for the depthwise 'same' conv.

    ``grid``: side of a square grid, or ``(rows, cols)``; ``prefix`` tokens
    (class, distillation, registers) skip the convolution."""
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    hidden = tokens @ wd + bd
    hidden = 0.5 * hidden * (1.0 + erf(hidden / np.sqrt(2.0)))
    batch, _, channels = hidden.shape
    k = kernel.shape[0]
    pad = (k - 1) // 2
    patches = hidden[:, prefix:].reshape(batch, rows, cols, channels)
    padded = np.zeros((batch, rows + k - 1, cols + k - 1, channels))
    padded[:, pad : pad + rows, pad : pad + cols] = patches
    conv = np.zeros_like(patches)
    for i in range(rows):
        for j in range(cols):
            window = padded[:, i : i + k, j : j + k, :]  # (batch, k, k, c)
            conv[:, i, j, :] = np.einsum("bijc,ijc->bc", window, kernel[:, :, :, 0])
    conv += bc
    hidden = np.concatenate([hidden[:, :prefix], conv.reshape(batch, -1, channels)], 1)
    return tokens + scale * (hidden @ wu + bu)


def test_common_checks(tmp_path):
    run_layer_checks(
        BypassAdapter,
        {"bottleneck_dim": 4, "scale": 0.5, "kernel_size": 3},
        _tokens(),
        (2, 17, 32),
        tmp_path,
        randomize_weights=True,
    )


def test_identity_at_init_and_trunk_untouched():
    h = keras.ops.convert_to_tensor(_tokens(seed=1))
    before = keras.ops.convert_to_numpy(h).copy()
    z = BypassAdapter(bottleneck_dim=4)(h)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(z), before)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(h), before)


@pytest.mark.parametrize("kernel_size", [5])  # 3 is covered by the common checks
def test_matches_numpy_reference(kernel_size, grid=4):
    # Same shapes as the other tests: JAX compiles each new shape anew.
    h = keras.ops.convert_to_tensor(_tokens((2, 1 + grid * grid, 32), seed=2))
    before = keras.ops.convert_to_numpy(h).copy()
    layer = BypassAdapter(bottleneck_dim=4, scale=0.7, kernel_size=kernel_size)
    layer(h)
    rng = np.random.default_rng(3)
    for w in layer.weights:
        w.assign(rng.normal(size=tuple(w.shape)).astype("float32"))
    got = keras.ops.convert_to_numpy(layer(h))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(h), before)
    weights = [
        keras.ops.convert_to_numpy(w)
        for w in (
            layer.down.kernel,
            layer.down.bias,
            layer.conv.kernel,
            layer.conv.bias,
            layer.up.kernel,
            layer.up.bias,
        )
    ]
    expected = _numpy_bypass(before, *weights, scale=0.7, grid=grid)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(got - before)) > 0.1  # the bypass is really used


def test_prefix_tokens_and_rectangular_grid_match_numpy():
    """DeiT-like layout: class + distillation token, then a 3x5 grid."""
    h = _tokens((2, 2 + 15, 32), seed=4)
    layer = BypassAdapter(bottleneck_dim=4, scale=0.5, num_prefix_tokens=2, grid_shape=(3, 5))
    layer(h)
    rng = np.random.default_rng(5)
    for w in layer.weights:
        w.assign(rng.normal(size=tuple(w.shape)).astype("float32"))
    got = keras.ops.convert_to_numpy(layer(h))
    weights = [
        keras.ops.convert_to_numpy(w)
        for w in (
            layer.down.kernel,
            layer.down.bias,
            layer.conv.kernel,
            layer.conv.bias,
            layer.up.kernel,
            layer.up.bias,
        )
    ]
    expected = _numpy_bypass(h, *weights, scale=0.5, grid=(3, 5), prefix=2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    config = layer.get_config()
    assert config["num_prefix_tokens"] == 2 and config["grid_shape"] == [3, 5]
    assert BypassAdapter.from_config(config).grid_shape == (3, 5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 prefix token\\(s\\) plus a 3x5 patch grid"):
        BypassAdapter(4, num_prefix_tokens=2, grid_shape=(3, 5))(_tokens((2, 18, 32)))
    with pytest.raises(ValueError, match="grid_shape"):
        BypassAdapter(4, grid_shape=7)
    with pytest.raises(ValueError, match="bottleneck_dim.*-1"):
        BypassAdapter(bottleneck_dim=-1)
    with pytest.raises(ValueError, match="kernel_size.*0"):
        BypassAdapter(4, kernel_size=0)
    with pytest.raises(ValueError, match="18 tokens"):
        BypassAdapter(4)(_tokens((2, 18, 32)))
    with pytest.raises(ValueError, match=r"`tokens` must be 3-D.*\(2, 4, 4, 32\)"):
        BypassAdapter(4)(np.zeros((2, 4, 4, 32), "float32"))
