"""The early-exit rule, written once (numpy only).

Each exit scores a sample in [0, 1]; the sample leaves at the first exit
whose score is at or above that exit's threshold, and the last exit always
answers (its threshold is stored, as 0.0 by convention, and ignored).

Threshold calibration (``keras_dmpo.inference.calibration``),
``EarlyExitModel.predict`` and the LiteRT ``StagedRuntime`` all call this
module, so a change to the rule is one edit. It imports numpy only, so the
phone-side runtime (``keras_dmpo.litert``) can use it without Keras.

Example:

>>> import numpy as np
>>> from keras_dmpo import exit_rule
>>> probabilities = np.array([[[0.9, 0.1], [0.6, 0.4]],    # exit 1, 2 samples
...                           [[0.5, 0.5], [0.7, 0.3]]])   # exit 2 (the last)
>>> scores = exit_rule.exit_scores(probabilities, "confidence")
>>> exit_rule.assign_exits(scores, [0.8, 0.0]).tolist()
[0, 1]
"""

import math

import numpy as np

CRITERIA = ("confidence", "entropy")


def check_criterion(criterion, argument="criterion"):
    """Return ``criterion`` if it is a known exit criterion, else raise."""
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise ValueError(f"`{argument}` must be one of {CRITERIA}; got {criterion!r}.")
    return criterion


def exit_scores(probabilities, criterion="confidence"):
    """Exit scores in [0, 1] from softmax outputs.

    Args:
        probabilities: ``(..., C)`` softmax outputs: ``(N, C)`` for one exit,
            ``(K, N, C)`` for K exits.
        criterion: ``"confidence"`` (the max probability) or ``"entropy"``
            (``1 - H / ln C``, H the entropy in nats: 1 for one-hot, 0 for
            uniform, and 1 when ``C == 1``).

    Returns:
        float64 array of shape ``probabilities.shape[:-1]``.
    """
    check_criterion(criterion)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] == 0:
        raise ValueError(
            f"`probabilities` must end in a class axis, e.g. (num_samples, num_classes); got shape {p.shape}."
        )
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


def check_thresholds(thresholds, num_exits):
    """``num_exits`` finite thresholds in [0, 1], as a float64 array.

    Raises a ``ValueError`` naming ``thresholds``, the value and what is
    expected otherwise.
    """
    try:
        values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
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


def leaves(k, probabilities, thresholds, criterion):
    """Which samples at exit ``k`` (0-based) answer there.

    The step a staged runner takes after running stage ``k`` on the samples
    still alive: ``probabilities`` ``(N, C)`` are exit k's outputs for them.
    At the last exit every sample answers.
    """
    if k == len(thresholds) - 1:
        return np.ones(np.shape(probabilities)[0], dtype=bool)
    return passes(exit_scores(probabilities, criterion), thresholds[k])


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
