"""Temperature scaling of an exit's probabilities, fitted by likelihood (numpy).

Softmax confidence is over-confident at shallow exits; dividing the logits
by a temperature ``T`` (Guo et al., 2017) fixes most of that without changing
any prediction. The exits' outputs here are probabilities, and
``softmax(log p / T) == softmax(z / T)`` for the logits ``z`` behind ``p``, so
one function serves Keras, the stored benchmark outputs and the LiteRT
runtime alike (``keras_dmpo.policy.rule.temper``).

The negative log-likelihood of the validation labels is convex in
``beta = 1 / T``, so the fit is a bisection on the sign of its derivative:
deterministic and dependency-free.
"""

import numpy as np

from keras_dmpo.policy import rule

# The fit searches beta = 1 / T in this range (T from 0.02 to 50).
_BETA_RANGE = (0.02, 50.0)


def _log_probabilities(probabilities):
    p = np.asarray(probabilities, dtype=np.float64)
    return np.log(np.clip(p, 1e-300, None))


def fit_temperature(probabilities, labels, iterations=100):
    """The temperature ``T > 0`` that minimises the NLL of ``labels`` under
    ``softmax(log p / T)``.

    Args:
        probabilities: ``(N, C)`` softmax outputs of one exit.
        labels: ``(N,)`` integer labels.
        iterations: bisection steps on ``log(1 / T)``.

    Returns:
        float. ``T > 1`` softens an over-confident exit, ``T < 1`` sharpens.
        An exit with no error on ``labels`` has no finite optimum (the
        likelihood keeps rising as ``T`` falls): the fit returns the bound,
        ``T = 0.02``, and that exit's confidence becomes ~1 for every sample.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> z = 2.0 * rng.normal(size=(4000, 3))             # true logits
    >>> true = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    >>> labels = np.array([rng.choice(3, p=p) for p in true])
    >>> over = np.exp(2 * z) / np.exp(2 * z).sum(-1, keepdims=True)  # twice too sharp
    >>> round(fit_temperature(over, labels), 1)
    2.0
    """
    z = _log_probabilities(probabilities)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if z.ndim != 2 or z.shape[0] != labels.shape[0] or z.shape[0] == 0:
        raise ValueError(
            f"`probabilities` must be (N, C) with N = len(labels) = {labels.shape[0]} > 0; got shape {z.shape}."
        )
    z = z - z.max(axis=-1, keepdims=True)
    target = z[np.arange(len(labels)), labels]

    def slope(beta):
        # d/d(beta) of mean(logsumexp(beta z) - beta z_y) = E_p_beta[z] - z_y.
        scaled = beta * z
        weights = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        return float(np.mean((weights * z).sum(axis=-1) - target))

    low, high = np.log(_BETA_RANGE[0]), np.log(_BETA_RANGE[1])
    if slope(np.exp(low)) >= 0:
        return 1.0 / _BETA_RANGE[0]
    if slope(np.exp(high)) <= 0:
        return 1.0 / _BETA_RANGE[1]
    for _ in range(iterations):
        middle = (low + high) / 2.0
        if slope(np.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return float(1.0 / np.exp((low + high) / 2.0))


def fit_temperatures(probabilities, labels):
    """One temperature per exit from ``(K, N, C)`` probabilities: a list of K floats."""
    probabilities = np.asarray(probabilities)
    return [fit_temperature(p, labels) for p in probabilities]


def expected_calibration_error(probabilities, labels, bins=15):
    """Expected calibration error of the max-probability confidence.

    Equal-width confidence bins; the mean over bins of ``|accuracy -
    confidence|`` weighted by the share of samples in the bin.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    confidence = p.max(axis=-1)
    correct = p.argmax(axis=-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def tempered(probabilities, temperatures):
    """``(K, N, C)`` probabilities with exit k's tempered by ``temperatures[k]``."""
    return np.stack([rule.temper(p, t) for p, t in zip(probabilities, temperatures)])
