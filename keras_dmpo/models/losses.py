"""Loss pieces of DMPOClassifier that need a word of their own: the
sample-weighted mean and the ``tf.distribute`` replica scaling (a TensorFlow
special case)."""

import keras
from keras import ops


def scale_loss_for_replicas(loss):
    """Divide by the replicas of a ``tf.distribute`` strategy, as Keras' own
    losses do: TF's train step sums the replicas' gradients and multiplies the
    logged loss back. Without this, ``MirroredStrategy`` on 2 devices logs
    twice the loss and takes twice the step. A no-op elsewhere (JAX
    ``keras.distribution`` runs one global program over the whole batch)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss * (1.0 / replicas)
    return loss


def weighted_mean(values, sample_weight):
    """Mean of per-sample ``values``, weighted by ``sample_weight`` when given."""
    if sample_weight is None:
        return ops.mean(values)
    return ops.sum(values * sample_weight) / ops.maximum(ops.sum(sample_weight), 1e-12)
