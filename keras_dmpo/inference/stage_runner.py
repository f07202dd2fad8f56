"""Compiled forward functions for the early-exit stage models.

``Model.predict_on_batch`` builds a data adapter on every call and traces a new
graph for every new batch size. Early exit calls each stage with a different
number of surviving samples every batch, so that path pays the overhead many
times per batch and, on TensorFlow, prints retracing warnings. A
``StageRunner`` compiles each stage once per backend in the way that backend
handles variable batch sizes best:

- TensorFlow: one ``tf.function`` with an unknown batch dimension (one trace,
  no padding);
- PyTorch: eager calls under ``torch.no_grad()`` (no tracing, no padding);
- JAX: ``jax.jit`` of ``stateless_call``; XLA needs static shapes, so the
  survivors are padded to a power-of-two bucket (at most ``log2(batch)+1``
  compilations per stage, reused across batches and calls).

Weights are read at call time, so a runner stays valid when the model trains
further.
"""

import keras
import numpy as np


def bucket_size(n, batch_size):
    """Smallest power of two >= n, capped at ``max(batch_size, n)``."""
    size = 1
    while size < n:
        size *= 2
    return min(size, max(batch_size, n))


class StageRunner:
    """Runs one stage model on a numpy batch and returns numpy outputs.

    Args:
        stage: a functional ``keras.Model`` with one input and a dict of
            outputs (as built by ``DMPOClassifier.build_stage_models``).

    Example:

    ```python
    runners = [StageRunner(s) for s in model.build_stage_models()]
    out = runners[0](images, batch_size=64)   # {"tokens": ..., "probabilities": ...}
    ```
    """

    def __init__(self, stage):
        self.stage = stage
        self.backend = keras.backend.backend()
        self._pads = self.backend == "jax"
        self._function = getattr(self, f"_build_{self.backend}", self._build_generic)()

    def __call__(self, inputs, batch_size):
        n = len(inputs)
        if self._pads:
            size = bucket_size(n, batch_size)
            if size > n:
                pad = np.zeros((size - n,) + inputs.shape[1:], inputs.dtype)
                inputs = np.concatenate([inputs, pad])
        outputs = self._function(inputs)
        return {key: np.asarray(keras.ops.convert_to_numpy(value))[:n] for key, value in outputs.items()}

    def _build_tensorflow(self):
        import tensorflow as tf

        shape = (None,) + tuple(self.stage.inputs[0].shape[1:])
        stage = self.stage

        @tf.function(input_signature=[tf.TensorSpec(shape, "float32")], autograph=False)
        def forward(x):
            return stage(x, training=False)

        return forward

    def _build_torch(self):
        import torch

        stage = self.stage

        def forward(x):
            with torch.no_grad():
                return stage(keras.ops.convert_to_tensor(x), training=False)

        return forward

    def _build_jax(self):
        import jax

        stage = self.stage

        @jax.jit
        def forward(trainable, non_trainable, x):
            outputs, _ = stage.stateless_call(trainable, non_trainable, x, training=False)
            return outputs

        def call(x):
            return forward(
                [v.value for v in stage.trainable_variables],
                [v.value for v in stage.non_trainable_variables],
                x,
            )

        return call

    def _build_generic(self):
        self._pads = True
        return self.stage.predict_on_batch
