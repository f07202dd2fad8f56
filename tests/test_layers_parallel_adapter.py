import keras
import numpy as np
import pytest
from layer_checks import run_layer_checks
from scipy.special import erf

from keras_dmpo.layers import ParallelAdapter


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _tokens(shape=(2, 17, 32), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_common_checks(tmp_path):
    h, out = _tokens(seed=0), _tokens(seed=1)
    run_layer_checks(
        ParallelAdapter,
        {"bottleneck_dim": 4, "scale": 0.5, "learnable_scale": True},
        [h, out],
        (2, 17, 32),
        tmp_path,
        randomize_weights=True,
    )


def test_identity_at_init_with_real_vit_block(tiny_vit, images):
    block = tiny_vit.get_layer("vit_encoder").encoder_layers[0]
    h = tiny_vit.get_layer("vit_patching_and_embedding")(images)
    block_out = block(h)
    adapter = ParallelAdapter(bottleneck_dim=4, learnable_scale=True)
    got = keras.ops.convert_to_numpy(adapter(h, block_out))
    np.testing.assert_array_equal(got, keras.ops.convert_to_numpy(block_out))
    up = adapter.up
    assert not np.any(keras.ops.convert_to_numpy(up.kernel))
    assert not np.any(keras.ops.convert_to_numpy(up.bias))


def test_matches_numpy_reference():
    h, out = _tokens(seed=2), _tokens(seed=3)
    adapter = ParallelAdapter(bottleneck_dim=4, scale=0.3)
    adapter(h, out)
    rng = np.random.default_rng(4)
    for w in adapter.weights:  # the zero-initialised Up too
        w.assign(rng.normal(size=tuple(w.shape)).astype("float32"))
    wd, bd = (keras.ops.convert_to_numpy(v) for v in adapter.down.weights)
    wu, bu = (keras.ops.convert_to_numpy(v) for v in adapter.up.weights)
    expected = out + 0.3 * (_gelu(h @ wd + bd) @ wu + bu)
    got = keras.ops.convert_to_numpy(adapter(h, out))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_learnable_scale_and_dropout():
    h, out = _tokens(seed=5), _tokens(seed=6)
    adapter = ParallelAdapter(bottleneck_dim=4, scale=0.2, learnable_scale=True, dropout=0.5)
    adapter(h, out)
    (scale,) = [w for w in adapter.trainable_weights if w.name == "scale"]
    assert float(keras.ops.convert_to_numpy(scale)) == pytest.approx(0.2)
    adapter.up.kernel.assign(np.ones(adapter.up.kernel.shape, "float32"))
    inference = keras.ops.convert_to_numpy(adapter(h, out, training=False))
    np.testing.assert_array_equal(inference, keras.ops.convert_to_numpy(adapter(h, out, training=False)))
    trained = keras.ops.convert_to_numpy(adapter(h, out, training=True))
    assert not np.allclose(trained, inference)
    fixed = ParallelAdapter(bottleneck_dim=4)
    fixed(h, out)
    assert [w.name for w in fixed.trainable_weights if w.name == "scale"] == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="bottleneck_dim.*0"):
        ParallelAdapter(bottleneck_dim=0)
    with pytest.raises(ValueError, match=r"`inputs` must be 3-D.*\(2, 32\)"):
        ParallelAdapter(4)(np.zeros((2, 32), "float32"), np.zeros((2, 32), "float32"))
    with pytest.raises(ValueError, match="same width"):
        ParallelAdapter(4)(_tokens(), _tokens((2, 17, 16)))
