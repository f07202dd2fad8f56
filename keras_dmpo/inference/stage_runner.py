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
  survivors run as power-of-two chunks of at least ``MIN_JAX_BUCKET`` rows
  (``chunk_sizes``: 38 survivors of a batch of 64 run as 32 + 8 rows, the
  last chunk padded, instead of 64 rows; at most ``log2(batch / 8) + 1``
  compilations per stage, reused across batches and calls). Padding to one
  power-of-two bucket wasted up to half of a deep stage's work, which on
  DINOv2-S cost a third of the early-exit speed-up; and on XLA's CPU backend
  a chunk of 16-32 rows costs less per row than one of 64 (measured in
  docs/early_exit.md), so the extra calls are not a loss; on a CPU no call
  holds more than ``MAX_JAX_CPU_CALL_ROWS`` (32) rows, whole batches
  included. The floor matters:
  with most samples leaving at the first exit, the deep stages see 1-8
  survivors, and one XLA compilation (about a second per stage on a laptop
  CPU) costs more than running 8 rows instead of 3.

Weights are read at call time, so a runner stays valid when the model trains
further.
"""

import keras
import numpy as np

# Measured in the JAX demo (8 stages, batch 64, one padded bucket per call):
# 28 stage compilations (36 s) without a floor, 9 (15 s) with a floor of 16.
MIN_JAX_BUCKET = 8
# XLA's CPU backend runs a DINOv2-S stage cheaper per row in calls of 16-32
# rows than of 64 (docs/early_exit.md), so on a CPU a JAX call holds at most
# this many rows; accelerators keep whole batches.
MAX_JAX_CPU_CALL_ROWS = 32


def pad_rows(array, size):
    """``array`` with zero rows appended up to ``size`` rows (a fixed shape
    for compiled functions; callers cut the outputs back)."""
    missing = size - len(array)
    if missing <= 0:
        return array
    return np.concatenate([array, np.zeros((missing,) + array.shape[1:], array.dtype)])


def bucket_size(n, batch_size, min_size=1):
    """Smallest power of two >= ``max(n, min_size)``, capped at
    ``max(batch_size, n)``."""
    size = 1
    while size < max(n, min_size):
        size *= 2
    return min(size, max(batch_size, n))


def chunk_sizes(n, batch_size, min_size=1):
    """Row counts of the compiled calls that run ``n`` rows of a batch of
    ``batch_size``: the largest powers of two first, the rest padded up to
    ``min_size`` rows, or one ``bucket_size`` call where that pads no more
    (fewer calls). A whole batch (``n >= batch_size``) is one call.

    >>> chunk_sizes(38, 64, min_size=8), chunk_sizes(64, 64, min_size=8)
    ([32, 8], [64])
    """
    if min_size < 1 or min_size & (min_size - 1):
        raise ValueError(f"`min_size` must be a power of two >= 1; got {min_size!r}.")
    if n >= batch_size:
        return [n]
    chunks, remaining = [], n
    while remaining >= min_size:
        size = 1 << (remaining.bit_length() - 1)
        chunks.append(size)
        remaining -= size
    if remaining:
        chunks.append(bucket_size(remaining, batch_size, min_size))
    single = bucket_size(n, batch_size, min_size)
    # n == 0 leaves no chunks: one padded call still gives outputs of 0 rows.
    return [single] if not chunks or single <= sum(chunks) else chunks


class StageRunner:
    """Runs one stage model on a numpy batch and returns numpy outputs.

    Args:
        stage: a functional ``keras.Model`` with one input and a dict of
            outputs (as built by ``DMPOClassifier.build_stage_models``).

    Example:

    >>> from keras_dmpo import DMPOClassifier
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 8])
    >>> runners = [StageRunner(s) for s in model.build_stage_models()]
    >>> out = runners[0](np.random.rand(5, 28, 28, 3).astype("float32"), batch_size=64)
    >>> {name: tuple(value.shape) for name, value in sorted(out.items())}
    {'probabilities': (5, 3), 'tokens': (5, 50, 128)}
    """

    def __init__(self, stage):
        self.stage = stage
        self.backend = keras.backend.backend()
        self._pads = self.backend == "jax"
        self._min_bucket = MIN_JAX_BUCKET if self._pads else 1
        self._max_rows = _max_call_rows(self.backend)
        self._function = getattr(self, f"_build_{self.backend}", self._build_generic)()

    def __call__(self, inputs, batch_size):
        n, batch_size = len(inputs), min(batch_size, self._max_rows)
        if n > batch_size:  # survivors pooled over several batches: whole batches, then the rest
            parts = [self(inputs[i : i + batch_size], batch_size) for i in range(0, n, batch_size)]
            return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        if not self._pads:
            return self._run(inputs)
        start, parts = 0, []
        for size in chunk_sizes(n, batch_size, self._min_bucket):
            chunk = inputs[start : start + size]
            parts.append(self._run(pad_rows(chunk, size), rows=len(chunk)))
            start += size
        if len(parts) == 1:
            return parts[0]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def _run(self, inputs, rows=None):
        outputs = self._function(inputs)
        return {key: np.asarray(keras.ops.convert_to_numpy(value))[:rows] for key, value in outputs.items()}

    def _build_tensorflow(self):
        import tensorflow as tf

        shape = (None,) + tuple(self.stage.inputs[0].shape[1:])
        stage = self.stage

        @tf.function(input_signature=[tf.TensorSpec(shape, "float32")], autograph=False)
        def forward(x):
            return stage(x, training=False)

        # Trace now, not in the first call: TF's retracing detector keys on
        # the function's code object, which every stage's ``forward`` shares,
        # so K first calls in a row looked like one function retraced K times
        # and printed "triggered tf.function retracing" warnings.
        forward.get_concrete_function()
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

        call.jitted = forward  # lets tests count compilations
        return call

    def _build_generic(self):
        # predict_on_batch traces per shape: bucketed shapes, as on JAX.
        self._pads = True
        self._min_bucket = MIN_JAX_BUCKET
        return self.stage.predict_on_batch


def _max_call_rows(backend):
    """The most rows one compiled call runs (``MAX_JAX_CPU_CALL_ROWS`` for
    JAX on a CPU; otherwise no limit beyond the caller's batch size)."""
    if backend == "jax":
        import jax

        if jax.default_backend() == "cpu":
            return MAX_JAX_CPU_CALL_ROWS
    return float("inf")
