import keras
import numpy as np
import pytest

from keras_dmpo import DMPOClassifier
from keras_dmpo.inference.stage_runner import MAX_JAX_CPU_CALL_ROWS, StageRunner, bucket_size, chunk_sizes


@pytest.fixture(scope="module")
def stages(tiny_vit_preset):
    keras.utils.set_random_seed(5)
    model = DMPOClassifier.from_preset(tiny_vit_preset, num_classes=4, exits=[1, 3])
    return model.build_stage_models(probabilities=True)


def test_bucket_size():
    assert [bucket_size(n, 64) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    assert bucket_size(40, 20) == 40  # never below n
    assert bucket_size(20, 24) == 24  # capped at the batch size
    assert [bucket_size(n, 64, min_size=16) for n in (1, 9, 16, 17, 40)] == [16, 16, 16, 32, 64]
    assert bucket_size(3, 8, min_size=16) == 8  # the cap wins over the floor


def test_chunk_sizes():
    assert chunk_sizes(38, 64, min_size=8) == [32, 8]
    assert chunk_sizes(154, 256, min_size=8) == [128, 16, 8, 8]
    assert chunk_sizes(17, 64, min_size=16) == [32]  # 16 + 16 pads as much: one call
    assert chunk_sizes(64, 64, min_size=8) == [64]  # a whole batch is one call
    assert chunk_sizes(100, 100, min_size=8) == [100]
    assert chunk_sizes(0, 64, min_size=8) == [8]  # no rows: one call, cut to 0 rows
    with pytest.raises(ValueError, match="min_size"):
        chunk_sizes(11, 64, min_size=3)
    for batch_size, min_size in ((128, 8), (64, 16), (48, 1)):
        powers = {2**k for k in range(12) if min_size <= 2**k <= batch_size}
        for n in range(1, batch_size):
            chunks = chunk_sizes(n, batch_size, min_size)
            assert set(chunks) <= powers, (n, chunks)
            assert 0 <= sum(chunks) - n < min_size, (n, chunks)  # fewer padded rows than the floor
            assert sum(chunks[:-1]) < n, (n, chunks)  # only the last chunk is padded
            assert chunks == sorted(chunks, reverse=True)


@pytest.mark.parametrize("n", [1, 3, 8, 13])
def test_runner_equals_keras_predict(stages, n):
    rng = np.random.default_rng(n)
    images = rng.uniform(size=(n, 32, 32, 3)).astype("float32")
    first, second = StageRunner(stages[0]), StageRunner(stages[1])
    out = first(images, batch_size=16)
    expected = stages[0].predict(images, verbose=0)
    assert set(out) == {"tokens", "probabilities"}
    for key in out:
        assert out[key].shape == expected[key].shape
        np.testing.assert_allclose(out[key], expected[key], atol=1e-5)
    following = second(out["tokens"], batch_size=16)
    expected = stages[1].predict(out["tokens"], verbose=0)
    for key in following:
        np.testing.assert_allclose(following[key], expected[key], atol=1e-5)


def test_runner_reads_current_weights(stages):
    images = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype("float32")
    runner = StageRunner(stages[0])
    before = runner(images, batch_size=4)["probabilities"]
    dense = [w for w in stages[0].trainable_weights if w.path.endswith("kernel")][-1]
    saved = keras.ops.convert_to_numpy(dense)
    try:
        # A random change: a constant shift of a classifier kernel moves every
        # logit alike and leaves the probabilities unchanged.
        dense.assign(saved + np.random.default_rng(1).normal(size=saved.shape).astype("float32"))
        after = runner(images, batch_size=4)["probabilities"]
        np.testing.assert_allclose(after, stages[0].predict(images, verbose=0)["probabilities"], atol=1e-5)
        assert np.abs(after - before).max() > 1e-4
    finally:
        dense.assign(saved)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function tracing count")
def test_tensorflow_traces_once_for_any_batch_size(stages):
    runner = StageRunner(stages[0])
    for n in (1, 5, 17, 64):
        runner(np.zeros((n, 32, 32, 3), "float32"), batch_size=64)
    assert runner._function.experimental_get_tracing_count() == 1


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF retracing warning")
def test_tensorflow_many_stages_print_no_retracing_warning(stages, caplog):
    import logging

    # Eight runners in a row, as the early-exit loop calls the stages of an
    # 8-exit model: each is traced once, and TF must not call it retracing.
    runners = [StageRunner(stages[0]) for _ in range(8)]
    images = np.zeros((3, 32, 32, 3), "float32")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for runner in runners:
            runner(images, batch_size=4)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert all(r._function.experimental_get_tracing_count() == 1 for r in runners)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="XLA bucket compilations")
def test_jax_compiles_one_shape_per_bucket(stages):
    runner = StageRunner(stages[1])
    images = np.random.default_rng(3).uniform(size=(64, 32, 32, 3)).astype("float32")
    tokens = stages[0].predict(images, verbose=0)["tokens"]
    expected = stages[1].predict(tokens, verbose=0)
    # distinct rows, so a chunk out of order or from the wrong offset shows
    assert np.abs(np.diff(expected["probabilities"], axis=0)).max() > 1e-3
    sizes = (1, 2, 3, 5, 9, 16, 17, 40, 64, 7)
    for n in sizes:
        out = runner(tokens[:n], batch_size=64)
        assert out["probabilities"].shape[0] == n  # padding rows are cut off
        # 17 and 40 rows run as two chunks, put back together in order
        np.testing.assert_allclose(out["probabilities"], expected["probabilities"][:n], atol=1e-5)
    assert runner(tokens[:0], batch_size=64)["probabilities"].shape == (0, 4)
    # 0..8 share the floor bucket of 8; then 16, 32 (40 = 32 + 8) and 64, which
    # on a CPU runs as 32 + 32 (MAX_JAX_CPU_CALL_ROWS).
    assert runner._function.jitted._cache_size() == (3 if runner._max_rows == 32 else 4)


def _rows_per_call(stage, n, batch_size, seed):
    """Runs ``n`` random images through a ``StageRunner`` of ``stage``; checks
    its outputs against ``stage.predict`` and returns the rows of each call."""
    runner = StageRunner(stage)
    rows_per_call = []
    function = runner._function

    def counting(x):
        rows_per_call.append(len(x))
        return function(x)

    runner._function = counting
    images = np.random.default_rng(seed).uniform(size=(n, 32, 32, 3)).astype("float32")
    out = runner(images, batch_size=batch_size)
    assert out["probabilities"].shape[0] == n
    np.testing.assert_allclose(
        out["probabilities"], stage.predict(images, verbose=0)["probabilities"], atol=1e-5
    )
    return rows_per_call


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX call-size limit")
def test_jax_on_a_cpu_calls_at_most_32_rows(stages):
    assert _rows_per_call(stages[0], 64, 64, seed=5) == [MAX_JAX_CPU_CALL_ROWS] * 2 == [32, 32]


def test_pooled_survivors_run_in_calls_of_at_most_batch_size_rows(stages):
    # EarlyExitModel.predict pools the survivors of several batches: a stage
    # then gets more rows than batch_size and must still call in batches.
    rows_per_call = _rows_per_call(stages[0], 23, 8, seed=4)
    assert max(rows_per_call) == 8 and sum(rows_per_call) >= 23
    assert rows_per_call[:2] == [8, 8]
