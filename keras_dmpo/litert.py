"""Staged early-exit runtime for exported TFLite stage graphs (LiteRT + numpy).

This module is what a phone-side or server-side user needs to run an exported
model: it imports only numpy, json, hashlib, os and time at import, and
``ai_edge_litert`` when the first stage is loaded. It never imports Keras,
keras-hub or TensorFlow (``import keras_dmpo.litert`` is tested to keep
``sys.modules`` free of them).

The directory is the output of ``EarlyExitModel.export_tflite`` (or
``keras_dmpo.export.tflite.export_stage_graphs``): ``manifest.json`` plus
``stage_1.tflite .. stage_K.tflite`` and optionally ``monolithic.tflite``.
See docs/export.md for the manifest schema.
"""

import hashlib
import json
import os
import time

import numpy as np

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
CRITERIA = ("confidence", "entropy")


def sha256_of_file(path, chunk_size=1 << 20):
    """Hex sha256 of a file, read in chunks (stage files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def exit_scores(probabilities, criterion):
    """Exit scores in [0, 1] for a batch of probability vectors.

    Args:
        probabilities: ``(N, C)`` array of softmax outputs.
        criterion: ``"confidence"`` (max probability) or ``"entropy"``
            (``1 - H / ln C``, so 1 means one-hot and 0 means uniform).

    Returns:
        ``(N,)`` float64 array. A sample leaves at an exit when its score is
        ``>=`` that exit's threshold.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if criterion == "confidence":
        return p.max(axis=-1)
    if criterion == "entropy":
        num_classes = p.shape[-1]
        if num_classes < 2:
            return np.ones(p.shape[:-1])
        # p log p -> 0 as p -> 0; the clip only avoids log(0) warnings.
        entropy = -np.sum(p * np.log(np.clip(p, 1e-30, None)), axis=-1)
        return 1.0 - entropy / np.log(num_classes)
    raise ValueError(f"`criterion` must be one of {CRITERIA}; got {criterion!r}.")


def assign_exits(stage_probabilities, thresholds, criterion):
    """Reference early-exit rule on full-batch outputs of every exit.

    Args:
        stage_probabilities: list of K ``(N, C)`` arrays, exit k's
            probabilities for every sample.
        thresholds: K thresholds (the last one is ignored: the last exit
            always answers).
        criterion: see ``exit_scores``.

    Returns:
        ``(N,)`` int64 array, the 0-based exit that answers each sample.
    """
    num_samples = np.asarray(stage_probabilities[0]).shape[0]
    exit_index = np.full(num_samples, len(stage_probabilities) - 1, dtype=np.int64)
    undecided = np.ones(num_samples, dtype=bool)
    for k, probabilities in enumerate(stage_probabilities[:-1]):
        leave = undecided & (exit_scores(probabilities, criterion) >= thresholds[k])
        exit_index[leave] = k
        undecided &= ~leave
    return exit_index


def _read_manifest(directory):
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Export directory {directory!r} does not exist (expected the output "
            "of EarlyExitModel.export_tflite)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {MANIFEST_NAME} in {directory!r}: not a keras_dmpo export, or an "
            "export that did not finish."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON (corrupt manifest): {error}") from error
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(manifest).__name__}.")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f"{path} has format_version={version!r}; this keras_dmpo runtime "
            f"supports format_version {list(SUPPORTED_FORMAT_VERSIONS)}. Re-export "
            "the model or upgrade keras_dmpo."
        )
    if manifest.get("format", "tflite") != "tflite":
        raise ValueError(
            f"{path} describes a {manifest.get('format')!r} export; StagedRuntime "
            "runs TFLite exports only (use onnxruntime for ONNX)."
        )
    for key in ("stages", "image_shape", "preprocessing", "criterion", "exits"):
        if key not in manifest:
            raise ValueError(f"{path} lacks the required key {key!r}.")
    return manifest


def _check_thresholds(thresholds, num_exits):
    try:
        values = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        raise ValueError(
            f"`thresholds` must be {num_exits} numbers in [0, 1]; got {thresholds!r}."
        ) from None
    if len(values) != num_exits:
        raise ValueError(
            f"`thresholds` must have one value per exit ({num_exits}); got "
            f"{len(values)}: {values}."
        )
    for value in values:
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(
                f"`thresholds` must lie in [0, 1] (scores are in [0, 1]); got "
                f"{value!r} in {values}."
            )
    return values


class _Stage:
    """One LiteRT interpreter, loaded on first use, resized only on change.

    Android apps call ``resizeInput`` + ``allocateTensors`` only when the batch
    size changes; the Python signature runner re-allocates on every call,
    which would dominate a 0.3 ms batch-1 stage. So inputs are set through the
    interpreter with the signature's tensor indices.
    """

    def __init__(self, path, entry, num_threads):
        self.path = path
        self.entry = entry
        self.num_threads = num_threads
        self._interpreter = None

    @property
    def loaded(self):
        return self._interpreter is not None

    def _load(self):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=self.path, num_threads=self.num_threads)
        interpreter.allocate_tensors()
        # Only the tensor indices are kept: a live SignatureRunner holds
        # references that make later allocate_tensors() calls refuse to run.
        runner = interpreter.get_signature_runner(self.entry.get("signature_key"))
        self._inputs = {
            name: detail["index"] for name, detail in runner.get_input_details().items()
        }
        self._outputs = {
            name: detail["index"] for name, detail in runner.get_output_details().items()
        }
        expected = {t["name"] for t in self.entry["inputs"]}
        if set(self._inputs) != expected:
            raise ValueError(
                f"{self.path} has signature inputs {sorted(self._inputs)}; the "
                f"manifest says {sorted(expected)}."
            )
        del runner
        self._shapes = {}
        self._single_name = next(iter(self._inputs)) if len(self._inputs) == 1 else None
        self._single_index = self._inputs.get(self._single_name)
        self._single_shape = None
        self._interpreter = interpreter

    def run_single(self, value):
        """Set the only input and invoke; read results with ``output``.

        The batch-1 fast path: no keyword dict, no output copies until asked
        (tokens are fetched only when the image goes on to the next stage).
        """
        if self._interpreter is None:
            self._load()
        interpreter = self._interpreter
        if self._single_shape != value.shape:
            interpreter.resize_tensor_input(self._single_index, value.shape)
            interpreter.allocate_tensors()
            self._single_shape = value.shape
            self._shapes = {self._single_name: value.shape}
        interpreter.set_tensor(self._single_index, value)
        interpreter.invoke()

    def output(self, name):
        """A copy of output ``name`` of the last invoke."""
        return self._interpreter.get_tensor(self._outputs[name])

    def __call__(self, **inputs):
        if self._interpreter is None:
            self._load()
        self._single_shape = None  # the next run_single re-checks the shape
        interpreter = self._interpreter
        resized = False
        for name, value in inputs.items():
            if self._shapes.get(name) != value.shape:
                interpreter.resize_tensor_input(self._inputs[name], value.shape)
                self._shapes[name] = value.shape
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for name, value in inputs.items():
            interpreter.set_tensor(self._inputs[name], value)
        interpreter.invoke()
        # get_tensor copies, so results survive the next invoke.
        return {name: interpreter.get_tensor(i) for name, i in self._outputs.items()}


class StagedRuntime:
    """Run exported TFLite stage graphs with the early-exit rule, as a phone would.

    Stage 1 runs on the whole batch; samples whose exit score reaches the
    threshold answer there, the others' tokens go on to stage 2, and so on;
    the last stage always answers.

    Images are given in the raw range that the manifest's ``preprocessing``
    describes (``input_range``) with the model's ``image_shape``; the runtime
    applies ``x * scale + offset`` (per channel when lists) before stage 1.
    It does not resize: resizing is the caller's job (``preprocessing.resize``).
    float32 and float64 images are accepted; uint8 images too when
    ``input_range`` is ``[0, 255]``.

    Args:
        directory: the export directory (holds ``manifest.json``).
        num_threads: LiteRT CPU threads per interpreter (``None``: LiteRT's
            default).
        verify_hashes: check every stage file's sha256 against the manifest
            when the runtime is created (fails early on a corrupt copy).
        thresholds: optional K thresholds in [0, 1] overriding the manifest's.

    Example:
    >>> rt = StagedRuntime("out/")
    >>> out = rt.predict(images)           # (N, H, W, C), raw range
    >>> out["labels"], out["exit_index"], out["flops"]
    >>> rt.thresholds = [0.9, 0.8, 0.0]    # trade accuracy for compute
    """

    def __init__(self, directory, num_threads=None, verify_hashes=True, thresholds=None):
        self.directory = os.fspath(directory)
        self.manifest = _read_manifest(self.directory)
        manifest = self.manifest
        self.criterion = manifest["criterion"]
        if self.criterion not in CRITERIA:
            raise ValueError(
                f"The manifest's criterion {self.criterion!r} is not one of {CRITERIA}."
            )
        self.exits = list(manifest["exits"])
        self.image_shape = tuple(manifest["image_shape"])
        self.flops_per_exit = np.array(
            [stage["flops"] for stage in manifest["stages"]], dtype=np.float64
        )
        self.full_model_flops = manifest.get("full_model_flops")
        self.class_names = manifest.get("class_names")
        self._set_preprocessing(manifest["preprocessing"])
        self._stages = [
            _Stage(self._checked_path(entry, verify_hashes), entry, num_threads)
            for entry in manifest["stages"]
        ]
        self._monolithic = None
        if manifest.get("monolithic"):
            entry = manifest["monolithic"]
            self._monolithic = _Stage(
                self._checked_path(entry, verify_hashes), entry, num_threads
            )
        self.thresholds = (
            [stage["threshold"] for stage in manifest["stages"]]
            if thresholds is None
            else thresholds
        )

    # -- manifest -------------------------------------------------------------

    def _checked_path(self, entry, verify_hashes):
        path = os.path.join(self.directory, entry["file"])
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Stage file {entry['file']!r} listed in the manifest is missing "
                f"from {self.directory!r}."
            )
        if verify_hashes:
            digest = sha256_of_file(path)
            if digest != entry["sha256"]:
                raise ValueError(
                    f"sha256 mismatch for {entry['file']!r} in {self.directory!r}: "
                    f"the manifest says {entry['sha256']}, the file has {digest}. "
                    "The file is corrupt or from another export."
                )
        return path

    def _set_preprocessing(self, preprocessing):
        channels = self.image_shape[-1]
        self._scale = np.asarray(preprocessing.get("scale", 1.0), dtype=np.float32)
        self._offset = np.asarray(preprocessing.get("offset", 0.0), dtype=np.float32)
        for name, value in (("scale", self._scale), ("offset", self._offset)):
            if value.ndim > 1 or (value.ndim == 1 and value.shape[0] not in (1, channels)):
                raise ValueError(
                    f"preprocessing {name!r} must be a number or {channels} per-channel "
                    f"values; got {value.tolist()}."
                )
        input_range = preprocessing.get("input_range", [0.0, 1.0])
        self.accepts_uint8 = list(map(float, input_range)) == [0.0, 255.0]

    @property
    def num_exits(self):
        return len(self._stages)

    @property
    def num_classes(self):
        return int(self.manifest["num_classes"])

    @property
    def thresholds(self):
        """The K exit thresholds in use (a copy; assign a new list to change)."""
        return list(self._thresholds)

    @thresholds.setter
    def thresholds(self, values):
        self._thresholds = _check_thresholds(values, self.num_exits)

    # -- inference ------------------------------------------------------------

    def preprocess(self, images):
        """Validate raw images and map them to the model's input space."""
        images = np.asarray(images)
        expected = (None,) + self.image_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"`images` must have shape (N, {', '.join(map(str, self.image_shape))}) "
                f"= {expected}; got {images.shape}. Resize to the manifest's "
                "preprocessing['resize'] and use its channel count."
            )
        allowed = ["float32", "float64"] + (["uint8"] if self.accepts_uint8 else [])
        if images.dtype.name not in allowed:
            raise ValueError(
                f"`images` dtype must be one of {allowed}; got {images.dtype}. "
                + (
                    ""
                    if self.accepts_uint8
                    else "uint8 is accepted only when preprocessing['input_range'] "
                    "is [0, 255]."
                )
            )
        return images.astype(np.float32) * self._scale + self._offset

    def predict(self, images, batch_size=None):
        """Early-exit prediction, like ``EarlyExitModel.predict``.

        Args:
            images: ``(N, H, W, C)`` raw images (see the class docstring).
            batch_size: samples per stage-1 call; ``None`` runs all at once.
                Use 1 to mimic a phone answering one image at a time.

        Returns:
            dict of numpy arrays: ``labels`` (N,) int64, ``probabilities``
            (N, C) float32, ``exit_index`` (N,) int64 0-based position in
            ``exits``, ``flops`` (N,) float64 FLOPs spent per sample.
        """
        x = self.preprocess(images)
        num_samples = x.shape[0]
        batch_size = num_samples if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1 or None; got {batch_size}.")
        probabilities = np.zeros((num_samples, self.num_classes), dtype=np.float32)
        exit_index = np.zeros(num_samples, dtype=np.int64)
        batch_one = batch_size == 1 and self._batch1_fast_path
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            if batch_one:
                probabilities[start], exit_index[start] = self._predict_one(x[start:stop])
                continue
            p, e = self._predict_batch(x[start:stop])
            probabilities[start:stop] = p
            exit_index[start:stop] = e
        return {
            "labels": probabilities.argmax(axis=-1).astype(np.int64),
            "probabilities": probabilities,
            "exit_index": exit_index,
            "flops": self.flops_per_exit[exit_index],
        }

    # Batch 1 (what a phone does) skips the survivor bookkeeping; the
    # benchmark turns it off to measure what it saves.
    _batch1_fast_path = True

    def _predict_one(self, x):
        """One image ``(1, H, W, C)``: the same rule as ``_predict_batch``."""
        last = self.num_exits - 1
        value = x
        for k, stage in enumerate(self._stages):
            stage.run_single(value)
            p = stage.output("probabilities")
            if k == last or exit_scores(p, self.criterion)[0] >= self._thresholds[k]:
                return p[0], k
            value = stage.output("tokens")
        raise AssertionError("unreachable: the last stage always answers")

    def _predict_batch(self, x):
        num_samples = x.shape[0]
        probabilities = np.zeros((num_samples, self.num_classes), dtype=np.float32)
        exit_index = np.zeros(num_samples, dtype=np.int64)
        alive = np.arange(num_samples)  # original positions of the survivors
        feed = {self._input_name(0): x}
        last = self.num_exits - 1
        for k, stage in enumerate(self._stages):
            outputs = stage(**feed)
            p = outputs["probabilities"]
            if k == last:
                leave = np.ones(len(alive), dtype=bool)
            else:
                leave = exit_scores(p, self.criterion) >= self._thresholds[k]
            probabilities[alive[leave]] = p[leave]
            exit_index[alive[leave]] = k
            if k == last or leave.all():
                break
            stay = ~leave
            alive = alive[stay]
            # Gather the survivors: the next stage runs at a smaller batch.
            feed = {self._input_name(k + 1): np.ascontiguousarray(outputs["tokens"][stay])}
        return probabilities, exit_index

    def _input_name(self, k):
        return self._stages[k].entry["inputs"][0]["name"]

    def predict_monolithic(self, images, batch_size=None):
        """Probabilities of the monolithic (single-graph, last-exit) model.

        Returns:
            dict with ``labels`` (N,) and ``probabilities`` (N, C).
        """
        if self._monolithic is None:
            raise ValueError(
                f"The export in {self.directory!r} has no monolithic model "
                "(export it with monolithic_model=...)."
            )
        x = self.preprocess(images)
        batch_size = x.shape[0] if batch_size is None else int(batch_size)
        name = self._monolithic.entry["inputs"][0]["name"]
        chunks = [
            self._monolithic(**{name: x[i : i + batch_size]})["probabilities"]
            for i in range(0, x.shape[0], batch_size)
        ]
        probabilities = np.concatenate(chunks, axis=0)
        return {"labels": probabilities.argmax(axis=-1).astype(np.int64),
                "probabilities": probabilities}

    # -- timing ---------------------------------------------------------------

    def stage_latency(self, batch_size=1, repeats=50, warmup=5):
        """Median wall time in ms of one call of every stage (and monolithic).

        Inputs are random but of the right shape; stage cost does not depend
        on the values. Returns a dict ``{"stage_1": ms, ..., "monolithic": ms}``.
        """
        rng = np.random.default_rng(0)
        graphs = [(f"stage_{k + 1}", s) for k, s in enumerate(self._stages)]
        if self._monolithic is not None:
            graphs.append(("monolithic", self._monolithic))
        result = {}
        for label, stage in graphs:
            feed = {}
            for spec in stage.entry["inputs"]:
                shape = [batch_size] + [int(d) for d in spec["shape"][1:]]
                feed[spec["name"]] = rng.uniform(0, 1, shape).astype(np.float32)
            result[label] = _median_ms(lambda: stage(**feed), repeats, warmup)
        return result

    def latency(self, images, repeats=5):
        """Median ms per image of ``predict(images, batch_size=1)``."""
        images = np.asarray(images)
        self.predict(images[:1], batch_size=1)  # load the stages
        return _median_ms(
            lambda: self.predict(images, batch_size=1), repeats, 0
        ) / max(1, images.shape[0])


def _median_ms(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))
