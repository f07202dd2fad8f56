"""One process of tests/test_multiprocess.py (a script, not a test module).

    python tests/multiprocess_worker.py ENGINE ROLE OUT_DIR INITIAL_WEIGHTS [RANK NUM_WORKERS]

ENGINE is ``jax`` or ``tensorflow``. ROLE ``single`` trains the reference
in one process on one device; ROLE ``worker`` is process RANK of NUM_WORKERS:

- JAX: ``jax.distributed.initialize`` with the coordinator address in
  ``KERAS_DMPO_TEST_COORDINATOR`` (gloo CPU collectives), then
  ``keras.distribution.DataParallel`` over every process's devices;
- TensorFlow: ``tf.distribute.MultiWorkerMirroredStrategy`` configured by the
  ``TF_CONFIG`` the parent sets.

Every role loads the same initial weights (an ``.npz`` of ``get_weights()``
written by the parent), trains on the same deterministic data at the same
*global* batch (no shuffling, plain SGD, fixed DMPO loss weights) and writes
``OUT_DIR/result_<role><rank>.json`` with the logged losses and
``OUT_DIR/weights_<role><rank>.npz`` with the trained weights. Every process
calls ``save_weights`` (a save is collective); only the chief's (rank 0)
``<role>.weights.h5`` is kept: the save-from-the-chief rule of docs/scaling.md.
"""

import json
import os
import sys
import time
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The data and the training run, shared by every role.
NUM_SAMPLES = 96
GLOBAL_BATCH = 32  # 3 steps; each of the 2 workers sees 16 examples a step
LEARNING_RATE = 0.1
NUM_BLOCKS = 2
EXITS = [1, 2]  # a covariance head (with its bypass) after block 1, a linear one after block 2
LOSS_WEIGHTS = [0.5, 1.0]


def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(NUM_SAMPLES, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=NUM_SAMPLES).astype("int32")
    return x, y


def build_model():
    """The tiny DMPOClassifier of the test (compiled with SGD)."""
    import keras

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import build_tiny_vit

    from keras_dmpo import DMPOClassifier

    model = DMPOClassifier(
        build_tiny_vit(seed=0, num_layers=NUM_BLOCKS), num_classes=3, exits=EXITS, loss_weights=LOSS_WEIGHTS
    )
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    return model


def _numpy(variable):
    value = variable.value
    # A replicated jax.Array that spans processes is not fully addressable;
    # every process holds a full copy, read the local one.
    shards = getattr(value, "addressable_shards", None)
    if shards is not None and not getattr(value, "is_fully_addressable", True):
        return np.asarray(shards[0].data)
    import keras

    return keras.ops.convert_to_numpy(value)


def main(engine, role, out_dir, initial_path, rank=0, num_workers=1):
    started = time.time()
    cpu = time.process_time()
    os.environ["KERAS_BACKEND"] = engine
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    info = {"engine": engine, "role": role, "rank": rank}
    strategy = None
    if engine == "jax":
        import jax

        if role == "worker":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(
                coordinator_address=os.environ["KERAS_DMPO_TEST_COORDINATOR"],
                num_processes=num_workers,
                process_id=rank,
                initialization_timeout=60,
            )
        info.update(
            processes=jax.process_count(), devices=len(jax.devices()), local_devices=len(jax.local_devices())
        )
    else:
        import tensorflow as tf

        if role == "worker":
            # Before any other TensorFlow op: the strategy starts the gRPC
            # server of this worker from TF_CONFIG.
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            info.update(
                replicas=strategy.num_replicas_in_sync,
                task_id=strategy.cluster_resolver.task_id,
                processes=len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]),
            )
        else:
            info.update(replicas=1, processes=1)

    import keras
    import keras_hub  # noqa: F401  (timed here, with TensorFlow)
    import tensorflow as tf

    keras.config.disable_traceback_filtering()  # full tracebacks in the logs
    info["import_seconds"] = time.time() - started
    x, y = data()
    # Global batches: Keras (JAX) and tf.distribute (TensorFlow) split each
    # one over the processes.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    if strategy is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)

    if engine == "jax" and role == "worker":
        distribution = keras.distribution.DataParallel(devices=jax.devices())
        keras.distribution.set_distribution(distribution)
        info["multi_process"] = bool(distribution._is_multi_process)
    if strategy is not None:
        from keras_dmpo.distribution import fix_multi_worker_build

        with strategy.scope():
            model = build_model()
        fix_multi_worker_build(model)  # keras-team/keras#20585
    else:
        model = build_model()
    with np.load(initial_path) as initial:
        model.set_weights([initial[f"w{i}"] for i in range(len(initial.files))])
    info["build_seconds"] = time.time() - started - info["import_seconds"]
    if engine == "jax":
        info["variable_sharding"] = str(model.trainable_weights[0].value.sharding)
    else:
        info["variable_type"] = type(model.trainable_weights[0].value).__name__

    losses = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            # The running mean of the epoch's loss after each step.
            losses.append(float(logs["loss"]))

    fit_started = time.time()
    model.fit(dataset, epochs=1, verbose=0, callbacks=[Record()])
    info["fit_seconds"] = time.time() - fit_started
    info["losses"] = losses
    info["loss_weights"] = [float(w) for w in model.get_loss_weights()]

    tag = f"{role}{rank}"
    np.savez(
        os.path.join(out_dir, f"weights_{tag}.npz"),
        **{f"w{i}": _numpy(v) for i, v in enumerate(model.weights)},
    )
    # Every process saves (saving may run collectives: under JAX it creates
    # a variable, which all-gathers across the processes, so a save on the
    # chief alone hangs); only the chief's file is kept.
    chief = rank == 0
    model.save_weights(os.path.join(out_dir, f"{role}.weights.h5" if chief else f"scratch_{tag}.weights.h5"))
    if not chief:
        os.remove(os.path.join(out_dir, f"scratch_{tag}.weights.h5"))
    info["seconds"] = time.time() - started
    info["cpu_seconds"] = time.process_time() - cpu
    with open(os.path.join(out_dir, f"result_{tag}.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    engine, role, out_dir, initial_path = sys.argv[1:5]
    rank, num_workers = (int(a) for a in sys.argv[5:7]) if len(sys.argv) > 5 else (0, 1)
    main(engine, role, out_dir, initial_path, rank, num_workers)
