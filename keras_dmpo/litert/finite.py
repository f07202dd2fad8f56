"""Finding NaN and inf pixels before a model sees them (numpy only)."""

import numpy as np

_SHOWN_INDICES = 5


def non_finite_samples(images, chunk_elements=1 << 22):
    """0-based indices (first axis) of the samples holding NaN or inf.

    Integer and boolean arrays are always finite. Works in chunks, so a large
    training array needs no full-size boolean copy.
    """
    array = np.asarray(images)
    if not np.issubdtype(array.dtype, np.inexact):
        return np.zeros(0, np.int64)
    if array.ndim == 0:
        return np.zeros(0 if np.isfinite(array) else 1, np.int64)
    per_sample = max(1, int(np.prod(array.shape[1:], dtype=np.int64)))
    rows = max(1, chunk_elements // per_sample)
    bad = []
    for start in range(0, array.shape[0], rows):
        finite = np.isfinite(array[start : start + rows]).reshape(-1, per_sample).all(axis=1)
        if not finite.all():
            bad.append(np.flatnonzero(~finite) + start)
    return np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)


def check_finite(images, argument="images", hint=""):
    """Raise a ``ValueError`` naming the first samples with NaN or inf values.

    Args:
        images: array whose first axis is the sample axis.
        argument: the argument's name for the message.
        hint: a sentence appended to the message (what the caller can do).
    """
    bad = non_finite_samples(images)
    if bad.size:
        total = np.shape(images)[0] if np.ndim(images) else 1
        shown = bad[:_SHOWN_INDICES].tolist()
        more = f" and {bad.size - len(shown)} more" if bad.size > len(shown) else ""
        raise ValueError(
            f"`{argument}` has NaN or inf pixel values in {bad.size} of {total} "
            f"samples (indices {shown}{more}); expected finite pixels. "
            + (hint or "Clean or drop those samples.")
        )
