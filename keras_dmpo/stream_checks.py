"""Every batch of a stream checked for NaN/inf pixels as training reads it.

A bad batch found mid-epoch, inside a backend's data pipeline, surfaces as a
``ValueError`` naming the batch and the sample. The check is one
``np.isfinite`` pass over the batch (its cost: ``benchmarks/stream_check_cost.py``),
or for a ``tf.data.Dataset`` the same test as an assertion in its graph.
"""

import keras
import numpy as np

from keras_dmpo.litert import non_finite_samples

# Marks our own message inside the error TensorFlow raises around it, so that
# ``reraise_bad_batch`` can give the user the plain ValueError.
BAD_BATCH = "keras_dmpo bad batch: "


def _bad_batch_message(images, index, argument):
    bad = non_finite_samples(images)
    if not bad.size:
        return None
    return (
        f"`{argument}` batch {index} has NaN or inf pixel values in {bad.size} of {len(images)} samples "
        f"(first: sample {int(bad[0])} of the batch); expected finite pixels. Clean or drop those samples."
    )


class _CheckedBatches(keras.utils.PyDataset):
    """A user's ``PyDataset`` whose every batch is checked for NaN/inf."""

    checks_its_batches = True

    def __init__(self, inner, argument):
        super().__init__(workers=inner.workers, use_multiprocessing=inner.use_multiprocessing)
        self.inner, self.argument = inner, argument

    def __len__(self):
        return len(self.inner)

    @property
    def num_batches(self):
        return self.inner.num_batches

    def on_epoch_end(self):
        self.inner.on_epoch_end()

    def __getitem__(self, index):
        batch = self.inner[index]
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(images, dict):
            message = _bad_batch_message(np.asarray(images), index, self.argument)
            if message:
                raise ValueError(BAD_BATCH + message)
        return batch


def _checked_tf_dataset(dataset, argument):
    """``dataset`` with an assertion on every batch of float images, inside
    its own graph: the element structure (and so the batch size Keras reads
    from it) and the cardinality stay as they were."""
    import tensorflow as tf

    template = (
        BAD_BATCH + f"`{argument}` batch {{}} has NaN or inf pixel values in {{}} of {{}} samples "
        "(first: sample {} of the batch); expected finite pixels. Clean or drop those samples."
    )

    def check(index, element):
        images = element[0] if isinstance(element, tuple) else element
        if isinstance(images, dict) or not images.dtype.is_floating:
            return element
        bad = tf.reduce_any(~tf.math.is_finite(tf.reshape(images, [tf.shape(images)[0], -1])), axis=1)
        count = tf.reduce_sum(tf.cast(bad, tf.int32))
        first = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int32)
        message = tf.strings.format(template, [index, count, tf.shape(images)[0], first])
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(count, 0), [message])]):
            images = tf.identity(images)
        return (images, *element[1:]) if isinstance(element, tuple) else images

    return dataset.enumerate().map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def checked_stream(x, argument="x"):
    """``x`` with every batch checked for non-finite pixels as it is read: a
    ``PyDataset`` is wrapped, a ``tf.data.Dataset`` gets an assertion per
    batch in its graph. Arrays are checked whole, up front, by the caller.

    Under a Keras distribution (``keras.distribution.set_distribution``,
    JAX data parallelism) a dataset is returned as it is, its first batch
    checked by the caller: the distribution reads the global batch size from
    the dataset's graph (``tf.data``'s ``compute_batch_size``), which any map
    on top of the user's ``batch`` hides."""
    if isinstance(x, keras.utils.PyDataset) and not getattr(x, "checks_its_batches", False):
        return _CheckedBatches(x, argument)
    if _is_tf_dataset(x) and keras.distribution.distribution() is None:
        return _checked_tf_dataset(x, argument)
    return x


def _is_tf_dataset(x):
    # Without importing TensorFlow for callers that never pass a dataset.
    return any(
        cls.__module__.startswith("tensorflow") and cls.__name__ == "DatasetV2" for cls in type(x).__mro__
    )


def reraise_bad_batch(error):
    """Our bad-batch ``ValueError`` from inside a backend's error, if it is one."""
    text = str(error)
    if BAD_BATCH not in text:
        return None
    message = text.split(BAD_BATCH, 1)[1]
    # TensorFlow appends its traceback/op context after the message (and an
    # assertion's data ends with "]").
    message = message.split("\n", 1)[0].split(" [Op:", 1)[0].split("]", 1)[0]
    return ValueError(message.rstrip(". ") + ".")
