"""The early-exit rule, written once (numpy only): scores and the comparison.

After each stage, an exit either answers for a sample or passes it on; the
last exit always answers. Which exits answer is an ``ExitPolicy``
(``keras_dmpo.policy``):

- ``"confidence"`` and ``"entropy"``: exit k scores the sample in [0, 1]
  (max probability; ``1 - H / ln C``) and answers when the score is at or
  above its threshold (``passes``, the one comparison of the rule). An
  optional temperature per exit rescales the probabilities first
  (``temper``: ``softmax(log p / T)``), which changes scores, not labels.
- ``"patience"`` (PABEE): exit k answers when exits k-p+1..k agree on the
  label (``patience`` = p >= 2).

It imports numpy only, so the phone-side runtime (``keras_dmpo.litert``)
uses it without Keras.

Example:

>>> import numpy as np
>>> from keras_dmpo.policy import rule
>>> probabilities = np.array([[[0.9, 0.1], [0.6, 0.4]],    # exit 1, 2 samples
...                           [[0.5, 0.5], [0.7, 0.3]]])   # exit 2 (the last)
>>> scores = rule.exit_scores(probabilities, "confidence")
>>> rule.assign_exits(scores, [0.8, 0.0]).tolist()
[0, 1]
"""

import math
import numbers

import numpy as np

CRITERIA = ("confidence", "entropy", "patience")
# Criteria that compare a score with a threshold per exit.
SCORE_CRITERIA = ("confidence", "entropy")


def check_criterion(criterion, argument="criterion"):
    """Return ``criterion`` if it is a known exit criterion, else raise."""
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise ValueError(f"`{argument}` must be one of {CRITERIA}; got {criterion!r}.")
    return criterion


def temper(probabilities, temperature):
    """``softmax(log p / T)`` along the last axis: probabilities at temperature
    ``T`` (None or 1: unchanged). Labels (argmax) never change."""
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature is None or temperature == 1.0:
        return p
    log_p = np.log(np.clip(p, 1e-300, None)) / float(temperature)
    log_p -= log_p.max(axis=-1, keepdims=True)
    e = np.exp(log_p)
    return e / e.sum(axis=-1, keepdims=True)


def exit_scores(probabilities, criterion="confidence", temperature=None):
    """Exit scores in [0, 1] from softmax outputs.

    Args:
        probabilities: ``(..., C)`` softmax outputs: ``(N, C)`` for one exit,
            ``(K, N, C)`` for K exits.
        criterion: ``"confidence"`` (the max probability) or ``"entropy"``
            (``1 - H / ln C``, H the entropy in nats: 1 for one-hot, 0 for
            uniform, and 1 when ``C == 1``).
        temperature: optional, applied first (``temper``); for ``(K, N, C)``
            input a single number, or use ``ExitPolicy`` for one per exit.

    Returns:
        float64 array of shape ``probabilities.shape[:-1]``.
    """
    check_criterion(criterion)
    if criterion not in SCORE_CRITERIA:
        raise ValueError(
            f"`criterion` {criterion!r} has no per-exit score (it compares exits' labels); "
            f"scores exist for {SCORE_CRITERIA}."
        )
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] == 0:
        raise ValueError(
            f"`probabilities` must end in a class axis, e.g. (num_samples, num_classes); got shape {p.shape}."
        )
    p = temper(p, temperature)
    if criterion == "confidence":
        scores = p.max(axis=-1)
    else:
        num_classes = p.shape[-1]
        if num_classes < 2:
            return np.ones(p.shape[:-1])
        p = np.clip(p, 0.0, 1.0)
        # 0 * log 0 = 0: take log(1) where p == 0.
        entropy = -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1)
        scores = 1.0 - entropy / math.log(num_classes)
    return np.clip(scores, 0.0, 1.0)


def _numbers(values):
    """Whether ``values`` is a sequence of real numbers (no strings, no
    booleans: a manifest's "0.5" or true is a mistake, not a number)."""
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "fiu"
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        return False
    return all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in values)


def check_thresholds(thresholds, num_exits):
    """``num_exits`` finite thresholds in [0, 1], as a float64 array.

    Raises a ``ValueError`` naming ``thresholds``, the value and what is
    expected otherwise.
    """
    if not _numbers(thresholds):
        raise ValueError(f"`thresholds` must be {num_exits} numbers in [0, 1]; got {thresholds!r}.")
    try:
        values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"`thresholds` must be {num_exits} numbers in [0, 1]; got {thresholds!r}.") from None
    if values.size != num_exits:
        raise ValueError(
            f"`thresholds` has {values.size} values; expected {num_exits} "
            f"(one per exit, the last one ignored). Got {thresholds!r}."
        )
    bad = [float(v) for v in values if not 0.0 <= v <= 1.0]  # NaN fails too
    if bad:
        raise ValueError(f"`thresholds` must be in [0, 1] (scores are); got {bad} in {values.tolist()}.")
    return values


def check_temperatures(temperatures, num_exits):
    """None, or ``num_exits`` positive finite temperatures as a tuple of floats."""
    if temperatures is None:
        return None
    if not _numbers(temperatures):
        raise ValueError(
            f"`temperatures` must be None or {num_exits} positive numbers; got {temperatures!r}."
        )
    try:
        values = [float(t) for t in temperatures]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"`temperatures` must be None or {num_exits} positive numbers; got {temperatures!r}."
        ) from None
    if len(values) != num_exits or not all(math.isfinite(t) and t > 0 for t in values):
        raise ValueError(
            f"`temperatures` must be None or {num_exits} positive numbers (one per exit); got {temperatures!r}."
        )
    return tuple(values)


def check_patience(patience, num_exits):
    """An int in [2, num_exits]: how many exits in a row must agree."""
    if (
        isinstance(patience, bool)
        or not isinstance(patience, (int, np.integer))
        or not 2 <= patience <= num_exits
    ):
        raise ValueError(
            f"`patience` must be an integer in [2, {num_exits}] (exits in a row that agree, "
            f"at most the number of exits); got {patience!r}."
        )
    return int(patience)


def check_scores(scores):
    """A non-empty, finite ``(K, N)`` float64 array of scores, or a ``ValueError``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(
            f"`scores` must be a non-empty (num_exits, num_samples) array; got shape {scores.shape}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("`scores` contains NaN or infinite values.")
    return scores


def passes(scores, thresholds):
    """The comparison of the rule: a score at or above its threshold.

    ``scores`` and ``thresholds`` broadcast (``(N,)`` against a number, or
    ``(K, N)`` against ``(K, 1)``).
    """
    return np.asarray(scores) >= thresholds


def first_exit(passed):
    """0-based exit per sample from ``(K, N)`` pass flags: the first exit that
    passes, the last when none of the earlier ones does."""
    passed = np.array(passed, dtype=bool, copy=True)
    passed[-1] = True
    return np.argmax(passed, axis=0).astype(np.int64)


def assign_exits(scores, thresholds):
    """The exit that answers each sample, from every exit's scores.

    Args:
        scores: ``(K, N)`` scores in [0, 1] (``exit_scores``).
        thresholds: K values in [0, 1]; the last one is ignored.

    Returns:
        ``(N,)`` int64 0-based exit indices.
    """
    scores = check_scores(scores)
    thresholds = check_thresholds(thresholds, scores.shape[0])
    return first_exit(passes(scores, thresholds[:, None]))


def patience_exits(labels, patience):
    """The exit that answers each sample under the patience rule, from every
    exit's labels ``(K, N)``: the first k where exits k-p+1..k agree."""
    labels = np.asarray(labels)
    streak = np.ones(labels.shape[1], dtype=np.int64)
    passed = np.zeros(labels.shape, dtype=bool)
    for k in range(1, labels.shape[0]):
        streak = np.where(labels[k] == labels[k - 1], streak + 1, 1)
        passed[k] = passes(streak, patience)
    return first_exit(passed)
