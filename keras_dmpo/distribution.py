"""Helper for training past one machine with the engines' own machinery.

keras_dmpo adds no distribution code of its own: multi-process training is
``jax.distributed.initialize`` + ``keras.distribution.DataParallel`` (JAX) or
``tf.distribute.MultiWorkerMirroredStrategy`` (TensorFlow); see
docs/scaling.md. This module holds the one workaround that TensorFlow path
needs with Keras 3.
"""

import keras


def fix_multi_worker_build(model):
    """Let ``model.fit`` run under ``tf.distribute.MultiWorkerMirroredStrategy``.

    Keras 3's TensorFlow trainer has two multi-worker bugs (open upstream as
    keras-team/keras#20585 and tensorflow/tensorflow#72388), which this
    works around on ``model`` alone:

    1. It builds the model's state from the first batch with
       ``strategy.reduce("MEAN", (x, y), axis=None)``, which the strategy
       rejects for a structure of per-replica values ("Attempt to convert a
       value (PerReplica:...) ... to a Tensor"). Only the batch's shapes and
       dtypes are used: the replacement reads this worker's first replica's
       batch instead.
    2. It averages each step's logs over the workers with
       ``strategy.reduce("MEAN", v, axis=0)``, which fails on the scalar
       loss and metrics ("Invalid reduction dimension 0 for input with 0
       dimensions"). ``train_step`` and ``test_step`` here return them with
       shape ``(1,)``: the same cross-worker mean, a scalar again after it.

    Call it once, after ``compile`` and before ``fit``, on every worker.

    Returns ``model``. Raises ``ValueError`` off the TensorFlow backend and
    ``RuntimeError`` if this Keras no longer has the trainer method it replaces.
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "fix_multi_worker_build is for tf.distribute strategies on the TensorFlow backend; "
            f"this is the {keras.backend.backend()} backend."
        )
    if not (hasattr(model, "_maybe_symbolic_build") and hasattr(model, "_symbolic_build")):
        raise RuntimeError(
            "This Keras version has no `Model._maybe_symbolic_build` / `_symbolic_build`; the "
            "MultiWorkerMirroredStrategy workaround does not apply (try fit without it)."
        )
    import tensorflow as tf
    from keras.src import tree

    def first_replica(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return model.distribute_strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        strategy = model._distribute_strategy
        if strategy is None:  # Keras builds at the first traced step then
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(first_replica, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def with_vector_logs(step):
        def wrapped(data):
            return tree.map_structure(
                lambda v: tf.reshape(v, (1,)) if tf.is_tensor(v) and v.shape.rank == 0 else v, step(data)
            )

        return wrapped

    model._maybe_symbolic_build = maybe_symbolic_build
    model.train_step = with_vector_logs(model.train_step)
    model.test_step = with_vector_logs(model.test_step)
    return model
