import keras
import numpy as np
import pytest
import scipy.linalg
from layer_checks import run_layer_checks

from keras_dmpo.layers import CovarianceExitHead, CovariancePooling, newton_schulz_sqrt


def _tokens(shape=(2, 17, 32), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _random_trace_normalised_spd(count, tokens, dim, seed):
    """Covariances of Gaussian tokens, as at the demo scale (49 patches)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, tokens, dim))
    x -= x.mean(axis=1, keepdims=True)
    cov = np.einsum("bti,btj->bij", x, x) / tokens + 1e-5 * np.eye(dim)
    return cov / np.trace(cov, axis1=1, axis2=2)[:, None, None]


def _relative_errors(approx, matrices):
    exact = np.stack([scipy.linalg.sqrtm(m).real for m in matrices])
    return np.linalg.norm(approx - exact, axis=(1, 2)) / np.linalg.norm(exact, axis=(1, 2))


def _numpy_newton_schulz(a, iterations):
    # Textbook coupled iteration, nothing folded.
    y, z, eye = a, np.eye(a.shape[-1]), np.eye(a.shape[-1])
    for _ in range(iterations):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    return y


def _numpy_covariance_pooling(layer, tokens):
    gamma, beta = (keras.ops.convert_to_numpy(w) for w in layer.layer_norm.weights)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in layer.reduce.weights)
    x = tokens.astype("float64")
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    x = (x - mean) / np.sqrt(var + 1e-6) * gamma + beta
    x = x[:, 1:] @ kernel + bias
    x -= x.mean(axis=1, keepdims=True)
    d = x.shape[-1]
    out = []
    for sample in x:
        cov = sample.T @ sample / sample.shape[0] + layer.epsilon * np.eye(d)
        root = scipy.linalg.sqrtm(cov).real
        out.append(root[np.triu_indices(d)])
    return np.stack(out)


# Measured mean relative errors for 20 matrices (49 tokens, d=32, float64):
# 3 it: 0.390, 5 it: 0.133, 8 it: 0.012, 10 it: 0.0003. Bounds slightly above.
@pytest.mark.parametrize("iterations,bound", [(5, 0.14), (8, 0.015)])
def test_newton_schulz_error_vs_sqrtm(iterations, bound):
    matrices = _random_trace_normalised_spd(20, 49, 32, seed=0).astype("float32")
    approx = keras.ops.convert_to_numpy(newton_schulz_sqrt(keras.ops.convert_to_tensor(matrices), iterations))
    errors = _relative_errors(approx.astype("float64"), matrices.astype("float64"))
    assert np.mean(errors) <= bound, np.mean(errors)


def test_newton_schulz_folding_matches_textbook_iteration():
    matrices = _random_trace_normalised_spd(3, 20, 8, seed=1).astype("float32")
    for iterations in (1, 2, 3, 6):
        got = keras.ops.convert_to_numpy(newton_schulz_sqrt(matrices, iterations))
        expected = np.stack([_numpy_newton_schulz(m.astype("float64"), iterations) for m in matrices])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_pooling_common_checks(tmp_path):
    run_layer_checks(
        CovariancePooling,
        {"covariance_dim": 8, "iterations": 5},
        _tokens(),
        (2, 36),
        tmp_path,
        randomize_weights=True,
    )


def test_pooling_matches_scipy_sqrtm():
    tokens = _tokens((2, 17, 32), seed=2)  # 16 patches, full-rank 8-d cov
    # With enough iterations the approximation reaches the exact root.
    layer = CovariancePooling(covariance_dim=8, iterations=14)
    got = keras.ops.convert_to_numpy(layer(tokens))
    expected = _numpy_covariance_pooling(layer, tokens)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-4)
    # At the default 5 iterations the error stays within the measured NS error.
    default = CovariancePooling(covariance_dim=8)
    default(tokens)
    default.set_weights(layer.get_weights())
    approx = keras.ops.convert_to_numpy(default(tokens))
    relative = np.linalg.norm(approx - expected) / np.linalg.norm(expected)
    assert 1e-4 < relative < 0.14, relative


def _train_one_step(tokens, dim):
    inputs = keras.Input(shape=tokens.shape[1:])
    outputs = CovarianceExitHead(num_classes=3, covariance_dim=dim, iterations=5)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    labels = np.arange(tokens.shape[0]) % 3
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    loss = model.train_on_batch(tokens, labels)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(w)) for w in after)
    return before, after


def test_finite_gradients_rank_deficient():
    # 4 patch tokens, covariance 8 x 8: rank <= 3 before the ridge.
    before, after = _train_one_step(_tokens((4, 5, 32), seed=4), dim=8)
    assert any(not np.allclose(a, b) for a, b in zip(after, before))


def test_finite_gradients_constant_input():
    _train_one_step(np.full((4, 17, 32), 0.7, "float32"), dim=8)


def test_mixed_float16_policy():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input(shape=(17, 32))
        x = keras.layers.Dense(32)(inputs)  # float16 tokens, as in a mixed model
        pooled = CovariancePooling(covariance_dim=8)
        head = CovarianceExitHead(num_classes=4, covariance_dim=8)
        model = keras.Model(inputs, [pooled(x), head(x)])
        assert pooled.compute_dtype == "float32" and head.compute_dtype == "float32"
        features, logits = model(_tokens(seed=5))
        assert keras.backend.standardize_dtype(x.dtype) == "float16"
        for out in (features, logits):
            assert keras.backend.standardize_dtype(out.dtype) == "float32"
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))
    finally:
        keras.config.set_dtype_policy(previous)


def test_pooling_bad_arguments():
    with pytest.raises(ValueError, match="iterations.*0"):
        CovariancePooling(covariance_dim=8, iterations=0)
    with pytest.raises(ValueError, match="iterations.*0"):
        newton_schulz_sqrt(np.eye(2, dtype="float32")[None] / 2, iterations=0)
    with pytest.raises(ValueError, match="dim.*0"):
        CovariancePooling(covariance_dim=0)
    with pytest.raises(ValueError, match="covariance_dim=64.*width 32|width 32.*covariance_dim=64"):
        CovariancePooling(covariance_dim=64)(_tokens())
    with pytest.raises(ValueError, match="2 tokens.*num_prefix_tokens=2"):
        CovariancePooling(covariance_dim=8, num_prefix_tokens=2)(_tokens((2, 2, 32)))
    with pytest.raises(ValueError, match="num_prefix_tokens.*0"):
        CovariancePooling(covariance_dim=8, num_prefix_tokens=0)
    with pytest.raises(ValueError, match=r"`tokens` must be 3-D.*\(2, 32\)"):
        CovariancePooling(covariance_dim=8)(np.zeros((2, 32), "float32"))


def test_configs_saved_with_dim_still_load():
    # Configs written before the size was called covariance_dim hold "dim".
    layer = CovariancePooling.from_config(
        {
            **{
                k: v
                for k, v in CovariancePooling(covariance_dim=8).get_config().items()
                if k != "covariance_dim"
            },
            "dim": 6,
        }
    )
    assert layer.covariance_dim == 6 and "dim" not in layer.get_config()
