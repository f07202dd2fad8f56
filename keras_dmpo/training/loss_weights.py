"""Per-exit loss weights: the check that the model and the phase schedule share."""

import numpy as np


def validate_loss_weights(weights, num_exits, argument):
    """Per-exit loss weights: ``num_exits`` finite, non-negative, not all zero."""
    array = np.asarray(weights, dtype="float64").reshape(-1)
    if array.shape[0] != num_exits:
        raise ValueError(
            f"`{argument}` must have one weight per exit ({num_exits}); got "
            f"{array.shape[0]}: {list(np.round(array, 4))}."
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"`{argument}` must be finite and non-negative; got {array.tolist()}.")
    if not np.any(array > 0):
        raise ValueError(f"`{argument}` are all zero: no exit would be trained.")
    return array.astype("float32")
