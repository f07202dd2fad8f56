"""Input checks shared by training, early-exit inference and the CLI.

They turn what would be a deep backend traceback (a shape mismatch inside a
compiled graph, a NaN loss from an out-of-range label or a NaN pixel) into a
``ValueError`` that names the argument, the value and what is expected.
"""

import numpy as np

# The numpy-only check lives in the runtime module, which must not import
# Keras (this one does so lazily too); both sides share one implementation.
from keras_dmpo.litert import (
    check_finite,
    non_finite_samples,  # noqa: F401  (re-exported)
)


def _to_numpy(value):
    if value is None or isinstance(value, np.ndarray):
        return value
    if hasattr(value, "numpy"):
        try:
            return value.numpy()
        except Exception:  # torch tensors that need .detach(), etc.
            pass
    try:
        import keras

        return keras.ops.convert_to_numpy(value)
    except Exception:
        return np.asarray(value)


def first_batch(x, y=None):
    """``(images, labels)`` to check: whole arrays, or the first dataset batch.

    Returns ``None`` when ``x`` is of a kind we do not inspect (generators).
    """
    if x is None:
        return None
    if isinstance(x, dict):
        return None
    module = type(x).__module__
    if module.startswith("tensorflow") and hasattr(x, "take"):
        for element in x.take(1):
            return _split_element(element)
        return None
    if hasattr(x, "__getitem__") and hasattr(x, "__len__") and hasattr(x, "on_epoch_end"):
        # keras.utils.PyDataset
        if len(x) == 0:
            return None
        return _split_element(x[0])
    if hasattr(x, "shape"):
        return _to_numpy(x), _to_numpy(y)
    return None


def _split_element(element):
    if isinstance(element, (tuple, list)):
        images = element[0]
        labels = element[1] if len(element) > 1 else None
    else:
        images, labels = element, None
    if isinstance(images, dict):
        return None
    return _to_numpy(images), _to_numpy(labels)


def check_images(images, image_shape, argument="x", allow_non_finite=False, hint=None):
    """Images must be ``(N,) + image_shape`` with a float or integer dtype,
    and (unless ``allow_non_finite``) hold no NaN or inf.

    ``hint``: what the caller can do about non-finite samples (a sentence
    appended to the error).
    """
    shape = tuple(np.shape(images))
    expected = tuple(int(s) for s in image_shape)
    if len(shape) != len(expected) + 1 or shape[1:] != expected:
        raise ValueError(
            f"`{argument}` has shape {shape}, but the model takes images of shape "
            f"(batch, {', '.join(map(str, expected))}). Resize/convert the images "
            f"to {expected[0]}x{expected[1]} with {expected[2]} channels."
        )
    dtype = np.asarray(images).dtype if not hasattr(images, "dtype") else images.dtype
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise ValueError(f"`{argument}` must hold numbers; got dtype {dtype}.")
    if not allow_non_finite and np.issubdtype(dtype, np.floating):
        check_finite(
            _to_numpy(images),
            argument,
            hint
            or "Clean or drop those samples: NaN or inf pixels give meaningless "
            "predictions and poison training.",
        )


def check_labels(labels, num_classes, argument="y", num_samples=None):
    """Sparse labels in ``[0, num_classes)`` or one-hot rows of ``num_classes``."""
    labels = np.asarray(labels)
    if num_samples is not None and labels.shape[0] != num_samples:
        raise ValueError(f"`{argument}` has {labels.shape[0]} labels for {num_samples} images.")
    if labels.ndim == 2 and labels.shape[1] == num_classes and num_classes > 1:
        return  # one-hot / soft labels
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"`{argument}` has shape {labels.shape}; expected (N,) integer labels "
            f"or (N, {num_classes}) one-hot labels."
        )
    if labels.size == 0:
        return
    if np.issubdtype(labels.dtype, np.floating) and not np.all(labels == np.round(labels)):
        raise ValueError(f"`{argument}` holds non-integer class labels.")
    low, high = labels.min(), labels.max()
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"`{argument}` has labels in [{low}, {high}], outside [0, {num_classes}) "
            f"for num_classes={num_classes}."
        )


def is_stream(x):
    """Whether ``x`` is a ``tf.data.Dataset`` or a ``keras.utils.PyDataset``
    (batches), rather than an array."""
    if hasattr(x, "as_numpy_iterator"):
        return True
    return hasattr(x, "__getitem__") and hasattr(x, "__len__") and hasattr(x, "on_epoch_end")


def iter_batches(x, y=None, batch_size=64, argument="x"):
    """``(images, labels)`` numpy batches of arrays (sliced), a
    ``tf.data.Dataset`` or a ``keras.utils.PyDataset`` yielding ``(images,
    labels)`` or images only (``labels`` is then None). Streams are read one
    batch at a time: nothing is concatenated."""
    if not is_stream(x):
        if not hasattr(x, "shape"):
            raise ValueError(
                f"`{argument}` must be an array, a tf.data.Dataset or a keras.utils.PyDataset; "
                f"got {type(x).__name__}."
            )
        x, y = _to_numpy(x), _to_numpy(y)
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], None if y is None else y[start : start + batch_size]
        return
    if y is not None:
        raise ValueError(f"`y` must be None when `{argument}` is a dataset that yields (x, y).")
    if hasattr(x, "as_numpy_iterator"):
        batches = x.as_numpy_iterator()
    else:
        batches = (x[i] for i in range(len(x)))
    empty = True
    for batch in batches:
        empty = False
        if isinstance(batch, (tuple, list)):
            yield np.asarray(batch[0]), (np.asarray(batch[1]) if len(batch) > 1 else None)
        else:
            yield np.asarray(batch), None
    if empty:
        raise ValueError(f"`{argument}` is empty: no batches to read.")
