"""What checking every batch of a stream for NaN/inf pixels costs.

``DMPOClassifier.fit``/``evaluate``/``predict`` check every batch of a
stream (``keras_dmpo.stream_checks``): a ``PyDataset``'s batches with one
``np.isfinite`` pass in Python, a ``tf.data.Dataset``'s with an assertion in
its own graph. Measured here per batch, on float32 batches of random pixels,
against reading the same batches unchecked:

- PyDataset: ``__getitem__`` of an in-memory ``PyDataset`` with and
  without the check wrapper;
- tf.data: one pass over ``from_tensor_slices(...).batch(B)`` with and
  without ``checked_stream``.

    .venv/bin/python benchmarks/stream_check_cost.py [--image-size 224 --batch-size 32 --batches 20]

Writes ``benchmarks/results/stream_check_cost.json``. The machine's load
average is recorded: ratios from one run only.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from machine_peak import best_seconds  # noqa: E402  (beside this script)

from keras_dmpo.atomic_io import write_json_atomic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "benchmarks", "results", "stream_check_cost.json")
    )
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from keras_dmpo.stream_checks import checked_stream

    load_at_start = list(os.getloadavg())
    n = args.batch_size * args.batches
    shape = (n, args.image_size, args.image_size, 3)
    x = np.random.default_rng(0).uniform(size=shape).astype("float32")
    y = np.zeros(n, "int32")

    class Plain(keras.utils.PyDataset):
        def __len__(self):
            return args.batches

        def __getitem__(self, i):
            b = args.batch_size
            return x[b * i : b * (i + 1)], y[b * i : b * (i + 1)]

    plain = Plain()
    checked = checked_stream(plain)

    def read_all(stream):
        return lambda: [stream[i] for i in range(len(stream))]

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size)
    checked_dataset = checked_stream(dataset)

    def iterate(ds):
        return lambda: [None for _ in ds]

    rows = {}
    for name, (unchecked_fn, checked_fn) in {
        "pydataset": (read_all(plain), read_all(checked)),
        "tf_data": (iterate(dataset), iterate(checked_dataset)),
    }.items():
        unchecked_s = best_seconds(unchecked_fn, args.repeats) / args.batches
        checked_s = best_seconds(checked_fn, args.repeats) / args.batches
        rows[name] = {
            "unchecked_ms_per_batch": 1e3 * unchecked_s,
            "checked_ms_per_batch": 1e3 * checked_s,
            "check_ms_per_batch": 1e3 * (checked_s - unchecked_s),
            "check_us_per_image": 1e6 * (checked_s - unchecked_s) / args.batch_size,
        }
        print(
            f"{name}: {1e3 * unchecked_s:.2f} ms/batch unchecked, {1e3 * checked_s:.2f} checked "
            f"(+{1e3 * (checked_s - unchecked_s):.2f} ms, "
            f"{1e6 * (checked_s - unchecked_s) / args.batch_size:.1f} us per image)"
        )
    result = {
        "command": "python benchmarks/stream_check_cost.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "batch_shape": [args.batch_size, args.image_size, args.image_size, 3],
        "load_average_at_start": load_at_start,
        "load_average_at_end": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "results": rows,
    }
    write_json_atomic(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
