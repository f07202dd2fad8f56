import keras
import numpy as np
import pytest
from layer_checks import run_layer_checks

from keras_dmpo.layers import CovarianceExitHead, LinearExitHead


def _tokens(shape=(2, 17, 32), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _layer_norm(x, gamma, beta, eps=1e-6):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + beta


def _numpy(weights):
    return [keras.ops.convert_to_numpy(w) for w in weights]


def _randomize(layer, seed):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(size=tuple(w.shape)).astype("float32"))


def test_linear_common_checks(tmp_path):
    run_layer_checks(
        LinearExitHead,
        {"num_classes": 5, "pooling": "mean"},
        _tokens(),
        (2, 5),
        tmp_path,
        randomize_weights=True,
    )


def test_covariance_head_common_checks(tmp_path):
    run_layer_checks(
        CovarianceExitHead,
        {"num_classes": 5, "covariance_dim": 8, "iterations": 5, "fusion": "mean"},
        _tokens(),
        (2, 5),
        tmp_path,
        randomize_weights=True,
    )


@pytest.mark.parametrize("pooling", ["class_token", "mean"])
@pytest.mark.parametrize("use_layer_norm", [True, False])
def test_linear_matches_numpy(pooling, use_layer_norm):
    tokens = _tokens(seed=1)
    head = LinearExitHead(4, pooling=pooling, use_layer_norm=use_layer_norm)
    head(tokens)
    _randomize(head, seed=2)
    pooled = tokens[:, 0] if pooling == "class_token" else tokens[:, 1:].mean(1)
    if use_layer_norm:
        pooled = _layer_norm(pooled, *_numpy(head.layer_norm.weights))
    else:
        assert head.layer_norm is None
    kernel, bias = _numpy(head.classifier.weights)
    got = keras.ops.convert_to_numpy(head(tokens))
    np.testing.assert_allclose(got, pooled @ kernel + bias, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fusion", ["mean", "sum", "covariance_only"])
def test_covariance_head_fusion(fusion):
    tokens = _tokens(seed=3)
    head = CovarianceExitHead(4, covariance_dim=8, fusion=fusion)
    head(tokens)
    _randomize(head, seed=4)
    features = keras.ops.convert_to_numpy(head.pooling(tokens))
    kernel, bias = _numpy(head.classifier.weights)
    covariance_logits = features @ kernel + bias
    got = keras.ops.convert_to_numpy(head(tokens))
    if fusion == "covariance_only":
        assert head.linear_head is None
        expected = covariance_logits
    else:
        gamma, beta = _numpy(head.linear_head.layer_norm.weights)
        lk, lb = _numpy(head.linear_head.classifier.weights)
        linear_logits = _layer_norm(tokens[:, 0], gamma, beta) @ lk + lb
        expected = covariance_logits + linear_logits
        if fusion == "mean":
            expected = expected / 2
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pooling.*'max'"):
        LinearExitHead(3, pooling="max")
    with pytest.raises(ValueError, match="fusion.*'concat'"):
        CovarianceExitHead(3, fusion="concat")
    with pytest.raises(ValueError, match="iterations.*0"):
        CovarianceExitHead(3, iterations=0)
    with pytest.raises(ValueError, match="num_classes.*0"):
        LinearExitHead(0)
    with pytest.raises(ValueError, match="covariance_dim=48"):
        CovarianceExitHead(3, covariance_dim=48)(_tokens())
    with pytest.raises(ValueError, match="1 tokens.*num_prefix_tokens=1"):
        CovarianceExitHead(3, covariance_dim=8)(_tokens((2, 1, 32)))
    with pytest.raises(ValueError, match="num_prefix_tokens.*-1"):
        LinearExitHead(3, num_prefix_tokens=-1)
    with pytest.raises(ValueError, match=r"`tokens` must be 3-D.*\(2, 32\)"):
        LinearExitHead(3)(np.zeros((2, 32), "float32"))
    with pytest.raises(ValueError, match=r"`tokens` must be 3-D"):
        CovarianceExitHead(3)(np.zeros((2, 32), "float32"))
