"""Run records: ``<results>/<dataset>/<method>_seed<k>.json``, one per run.

A record is written atomically once its run is over, so an interrupted
benchmark resumes by skipping the runs whose record exists.
"""

import json
import os

from keras_dmpo.atomic_io import write_json_atomic


def result_path(results_dir, dataset, method, seed):
    return os.path.join(results_dir, dataset, f"{method}_seed{seed}.json")


def write_record(path, record):
    """The record as indented JSON, atomically (its folder made if needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, record)


def record_paths(results_dir):
    """Every record under ``results_dir``, sorted by data set then name
    (hidden names are unfinished writes)."""
    paths = []
    if not os.path.isdir(results_dir):
        return paths
    for dataset in sorted(os.listdir(results_dir)):
        folder = os.path.join(results_dir, dataset)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json") and not name.startswith("."):
                paths.append(os.path.join(folder, name))
    return paths


def load_results(results_dir):
    """All run records under ``results_dir``: a list of dicts."""
    records = []
    for path in record_paths(results_dir):
        with open(path) as handle:
            records.append(json.load(handle))
    return records
