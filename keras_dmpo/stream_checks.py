"""Every batch of a stream checked for NaN/inf pixels as training reads it.

A bad batch found mid-epoch, inside a backend's data pipeline, surfaces as a
``ValueError`` naming the batch and the sample. The check is one
``np.isfinite`` pass over the batch (its cost: ``benchmarks/data_scale.py``).
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


def checked_stream(x, argument="x"):
    """``x`` with every batch checked for non-finite pixels as it is read: a
    ``PyDataset`` is wrapped. Arrays are checked whole, up front, by the
    caller. A ``tf.data.Dataset`` is returned as it is: a check inside its
    graph would change the element structure Keras reads the batch size
    from (multi-process JAX needs it) and, on TensorFlow, an error raised in
    the pipeline ends the epoch early instead of stopping ``fit``. Its first
    batch is checked; ``EarlyExitModel`` checks every batch of any stream."""
    if isinstance(x, keras.utils.PyDataset) and not getattr(x, "checks_its_batches", False):
        return _CheckedBatches(x, argument)
    return x


def reraise_bad_batch(error):
    """Our bad-batch ``ValueError`` from inside a backend's error, if it is one."""
    text = str(error)
    if BAD_BATCH not in text:
        return None
    message = text.split(BAD_BATCH, 1)[1]
    # TensorFlow appends its traceback/op context after the message.
    return ValueError(message.split("\n", 1)[0].split(" [Op:", 1)[0].rstrip(". ") + ".")
