"""The per-exit outputs kept beside each run record (``<method>_seed<k>.npz``).

They let a run be re-read under other budgets or exit policies without
retraining (``--recalibrate``, ``benchmarks/exit_policies.py``). Stored as
log-probabilities in float16 (floored at 1e-30) and int16 labels:
log-probabilities divided by a temperature give the same softmax as the
logits would, so temperature scaling works on them too.
"""

import io
import os

import numpy as np

from keras_dmpo.atomic_io import write_bytes_atomic

SPLITS = ("val", "test")


def outputs_path(record_path):
    """The outputs of the run whose JSON record is ``record_path``."""
    return record_path[: -len(".json")] + ".npz"


def write_outputs(path, outputs):
    """Write ``{"<split>_log_probabilities": (K, N, C) probabilities,
    "<split>_labels": (N,)}`` atomically. Runs write it before their JSON, so
    a record never points at a missing file."""
    arrays = {}
    for key, value in outputs.items():
        value = np.asarray(value)
        if key.endswith("log_probabilities"):
            value = np.log(np.maximum(value, 1e-30)).astype("float16")
        else:
            value = value.reshape(-1).astype("int16")
        arrays[key] = value
    # Compressed in memory, then written by the library's atomic writer.
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())


def read_outputs(path):
    """Inverse of ``write_outputs``: ``(val_probs, val_labels, test_probs,
    test_labels)``, probabilities renormalised after the float16 round trip."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    probs = {}
    for split in SPLITS:
        p = np.exp(arrays[f"{split}_log_probabilities"].astype("float64"))
        probs[split] = p / p.sum(-1, keepdims=True)
    return (
        probs["val"],
        arrays["val_labels"].astype("int64"),
        probs["test"],
        arrays["test_labels"].astype("int64"),
    )
