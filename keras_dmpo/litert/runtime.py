"""StagedRuntime: run exported TFLite stage graphs with LiteRT, exiting early."""

import os
import time
import warnings

import numpy as np

from keras_dmpo.hashing import sha256_file as sha256_of_file
from keras_dmpo.litert import manifest as manifest_schema
from keras_dmpo.litert.finite import check_finite
from keras_dmpo.policy import route
from keras_dmpo.policy.holder import HoldsPolicy

# Pixels further than this fraction of the input range outside it make
# StagedRuntime warn (once): probably already-normalised or 0-255 images fed
# to a model that expects another range.
INPUT_RANGE_TOLERANCE = 0.5


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

        key = self.entry.get("signature_key")
        try:
            interpreter = Interpreter(model_path=self.path, num_threads=self.num_threads)
            interpreter.allocate_tensors()
            # Only the tensor indices are kept: a live SignatureRunner holds
            # references that make later allocate_tensors() calls refuse to run.
            runner = interpreter.get_signature_runner(key)
            inputs = runner.get_input_details()
            outputs = runner.get_output_details()
        except (ValueError, RuntimeError, KeyError) as error:
            raise ValueError(
                f"{self.path} does not load as the TFLite graph the manifest describes "
                f"(signature_key {key!r}): {error}"
            ) from None
        del runner
        for kind, details in (("inputs", inputs), ("outputs", outputs)):
            expected = {t["name"]: t for t in self.entry[kind]}
            if set(details) != set(expected):
                raise ValueError(
                    f"{self.path} has signature {kind} {sorted(details)}; the manifest "
                    f"says {sorted(expected)}."
                )
            for name, detail in details.items():
                got = ([int(d) for d in detail["shape_signature"]], np.dtype(detail["dtype"]).name)
                want = (list(expected[name]["shape"]), expected[name]["dtype"])
                if got != want:
                    raise ValueError(
                        f"{self.path}: signature {kind[:-1]} {name!r} has shape {got[0]} "
                        f"and dtype {got[1]}; the manifest says {want[0]} and {want[1]}."
                    )
        self._inputs = {name: detail["index"] for name, detail in inputs.items()}
        self._outputs = {name: detail["index"] for name, detail in outputs.items()}
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


class _TokensOnDemand:
    """A stage's tokens, copied out of the interpreter only when the image
    goes on to the next stage (most leave early on a phone)."""

    def __init__(self, stage):
        self.stage = stage

    def __getitem__(self, rows):
        return self.stage.output("tokens")[rows]


class StagedRuntime(HoldsPolicy):
    """Run exported TFLite stage graphs with the early-exit rule, as a phone would.

    Stage 1 runs on the whole batch; samples whose exit answers (the
    manifest's exit policy, a ``keras_dmpo.policy.ExitPolicy``: the
    criterion, thresholds, optional per-exit temperatures, or patience) leave
    there, the others' tokens go on to stage 2, and so on; the last stage
    always answers. ``self.policy`` is that policy; assign a new one (or
    ``thresholds``, which replaces it with other thresholds) to change it.

    Images are given in the raw range that the manifest's ``preprocessing``
    describes (``input_range``) with the model's ``image_shape``; the runtime
    applies ``x * scale + offset`` (per channel when lists) before stage 1.
    It does not resize: resizing is the caller's job (``preprocessing.resize``).
    float32 and float64 images are accepted; uint8 images too when
    ``input_range`` is ``[0, 255]``. Images with NaN or inf pixels are refused
    (``predict(..., allow_non_finite=True)`` lets them through), and pixels far
    outside ``input_range`` give a warning once per runtime.

    The manifest is validated against its schema before any stage file is
    opened; every file it names must be a plain file name inside
    ``directory`` (no ``..``, no absolute path, no symlink leaving it). See
    docs/reliability.md.

    Args:
        directory: the export directory (holds ``manifest.json``).
        num_threads: LiteRT CPU threads per interpreter (``None``: LiteRT's
            default).
        verify_hashes: check every stage file's sha256 against the manifest
            when the runtime is created (fails early on a corrupt copy).
        thresholds: optional K thresholds in [0, 1] overriding the manifest's.
        policy: optional ``ExitPolicy`` (or its dict) overriding the manifest's.

    Example (the export made on the TensorFlow backend, in-process):

    >>> from keras_dmpo import DMPOClassifier, EarlyExitModel
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 8])
    >>> manifest = EarlyExitModel(model, thresholds=[0.5, 0.0]).export_tflite("out/")
    >>> rt = StagedRuntime("out/", num_threads=1)
    >>> images = np.random.rand(4, 28, 28, 3).astype("float32")   # raw range [0, 1]
    >>> out = rt.predict(images)
    >>> out["labels"].shape, out["exit_index"].shape, out["flops"].shape
    ((4,), (4,), (4,))
    >>> rt.thresholds = [1.0, 0.0]    # trade compute for accuracy: all go deep
    >>> rt.predict(images)["exit_index"].tolist()
    [1, 1, 1, 1]
    """

    def __init__(self, directory, num_threads=None, verify_hashes=True, thresholds=None, policy=None):
        self.directory = os.fspath(directory)
        # Schema first (pure Python), then every file's location and type,
        # then the hashes: nothing is opened before the manifest is accepted.
        self.manifest = manifest_schema.read_manifest(self.directory)
        manifest = self.manifest
        self.exits = list(manifest["exits"])
        self.image_shape = tuple(manifest["image_shape"])
        self.flops_per_exit = np.array([stage["flops"] for stage in manifest["stages"]], dtype=np.float64)
        self.full_model_flops = manifest.get("full_model_flops")
        self.class_names = manifest.get("class_names")
        # 1 for a web=True bundle: its graphs take one image per call.
        self.fixed_batch_size = manifest_schema.fixed_batch_size(manifest)
        self._set_preprocessing(manifest["preprocessing"])
        entries = [(f"manifest['stages'][{k}]['file']", entry) for k, entry in enumerate(manifest["stages"])]
        if manifest.get("monolithic"):
            entries.append(("manifest['monolithic']['file']", manifest["monolithic"]))
        paths = [
            manifest_schema.resolve_bundle_file(self.directory, entry["file"], where)
            for where, entry in entries
        ]
        if verify_hashes:
            for (_, entry), path in zip(entries, paths):
                self._verify_file(path, entry)
        graphs = [_Stage(path, entry, num_threads) for (_, entry), path in zip(entries, paths)]
        self._stages = graphs[: len(manifest["stages"])]
        self._monolithic = graphs[len(manifest["stages"])] if len(graphs) > len(self._stages) else None
        self._warned_range = False
        if policy is not None and thresholds is not None:
            raise ValueError("Give `policy` or `thresholds`, not both.")
        self.policy = manifest_schema.manifest_policy(manifest) if policy is None else policy
        if thresholds is not None:
            self.thresholds = thresholds

    # -- manifest -------------------------------------------------------------

    def _verify_file(self, path, entry):
        size = os.path.getsize(path)
        if size != entry["size_bytes"]:
            raise ValueError(
                f"size mismatch for {entry['file']!r} in {self.directory!r}: the "
                f"manifest says {entry['size_bytes']} bytes, the file has {size}. "
                "The file is truncated, corrupt or from another export."
            )
        digest = sha256_of_file(path)
        if digest != entry["sha256"].lower():
            raise ValueError(
                f"sha256 mismatch for {entry['file']!r} in {self.directory!r}: "
                f"the manifest says {entry['sha256']}, the file has {digest}. "
                "The file is corrupt or from another export."
            )

    def _set_preprocessing(self, preprocessing):
        # validate_manifest checked the types and lengths.
        self._scale = np.asarray(preprocessing["scale"], dtype=np.float32)
        self._offset = np.asarray(preprocessing["offset"], dtype=np.float32)
        self.input_range = tuple(float(v) for v in preprocessing["input_range"])
        self.accepts_uint8 = list(self.input_range) == [0.0, 255.0]

    @property
    def num_exits(self):
        return len(self._stages)

    @property
    def num_classes(self):
        return int(self.manifest["num_classes"])

    # -- inference ------------------------------------------------------------

    def preprocess(self, images, allow_non_finite=False):
        """Validate raw images and map them to the model's input space.

        Refuses NaN or inf pixels (``ValueError`` naming the first samples)
        unless ``allow_non_finite``; warns once per runtime when pixels lie far
        outside the manifest's ``preprocessing['input_range']``.
        """
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
                    else "uint8 is accepted only when preprocessing['input_range'] is [0, 255]."
                )
            )
        if not allow_non_finite:
            check_finite(
                images,
                "images",
                "Clean or drop those samples, or pass allow_non_finite=True to run "
                "them anyway (their outputs are then meaningless).",
            )
        if images.dtype != np.uint8 and images.size:
            self._warn_if_out_of_range(images)
        x = images.astype(np.float32) * self._scale + self._offset
        if not allow_non_finite:
            check_finite(
                x,
                "images",
                "They are finite but overflow float32 after x * scale + offset; "
                "pass raw pixels in preprocessing['input_range'].",
            )
        return x

    def _warn_if_out_of_range(self, images):
        if self._warned_range:
            return
        values = images if np.isfinite(images).all() else images[np.isfinite(images)]
        if not values.size:
            return
        low, high = self.input_range
        margin = INPUT_RANGE_TOLERANCE * (high - low)
        seen_low, seen_high = float(values.min()), float(values.max())
        if seen_low < low - margin or seen_high > high + margin:
            self._warned_range = True
            warnings.warn(
                f"`images` hold pixel values in [{seen_low:.4g}, {seen_high:.4g}], far "
                f"outside the manifest's preprocessing['input_range'] [{low:g}, {high:g}] "
                f"of raw pixels. StagedRuntime applies x * scale + offset itself: pass "
                "raw pixels in that range (not normalised or rescaled ones). Shown once "
                "per runtime.",
                RuntimeWarning,
                stacklevel=4,
            )

    def predict(self, images, batch_size=None, allow_non_finite=False):
        """Early-exit prediction, like ``EarlyExitModel.predict``.

        Args:
            images: ``(N, H, W, C)`` raw images (see the class docstring).
            batch_size: samples per stage-1 call; ``None`` runs all at once.
                Use 1 to mimic a phone answering one image at a time. A
                batch-1 bundle (``web=True`` export) always runs one image
                at a time.
            allow_non_finite: let images with NaN or inf pixels through
                (their outputs are meaningless). By default they raise a
                ``ValueError`` naming the first such samples.

        Returns:
            dict of numpy arrays: ``labels`` (N,) int64, ``probabilities``
            (N, C) float32, ``exit_index`` (N,) int64 0-based position in
            ``exits``, ``flops`` (N,) float64 FLOPs spent per sample.
        """
        batch_size = self._check_batch_size(batch_size)
        x = self.preprocess(images, allow_non_finite=allow_non_finite)
        num_samples = x.shape[0]
        batch_size = num_samples if batch_size is None else int(batch_size)
        if self.fixed_batch_size is not None:
            batch_size = self.fixed_batch_size
        probabilities = np.zeros((num_samples, self.num_classes), dtype=np.float32)
        exit_index = np.zeros(num_samples, dtype=np.int64)
        batch_one = batch_size == 1
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

    def exit_probabilities(self, images, batch_size=None, allow_non_finite=False):
        """Every exit's probabilities for every image, ``(K, N, C)`` float32,
        like ``EarlyExitModel.exit_probabilities``: every stage runs on every
        image, so the exit policy can be calibrated on the graphs' own
        outputs (``keras_dmpo.policy.calibrate``) and applied to them
        (``ExitPolicy.assign``), for instance after quantization.

        ``images``, ``batch_size`` and ``allow_non_finite`` as in ``predict``.
        """
        batch_size = self._check_batch_size(batch_size)
        x = self.preprocess(images, allow_non_finite=allow_non_finite)
        num_samples = x.shape[0]
        batch_size = self.fixed_batch_size or batch_size or max(1, num_samples)
        probabilities = np.zeros((self.num_exits, num_samples, self.num_classes), dtype=np.float32)
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            value = x[start:stop]
            for k in range(self.num_exits):
                outputs = self._stages[k](**{self._input_name(k): value})
                probabilities[k, start:stop] = outputs["probabilities"]
                value = outputs.get("tokens")
        return probabilities

    @staticmethod
    def _check_batch_size(batch_size):
        if batch_size is not None and (
            not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` must be an integer >= 1 or None; got {batch_size!r}.")
        return batch_size

    def _predict_one(self, x):
        """One image ``(1, H, W, C)`` (what a phone does): each stage through
        the interpreter's tensors, with no re-allocation per call."""

        def run_stage(k, value):
            stage = self._stages[k]
            stage.run_single(value)
            last = k == self.num_exits - 1
            return stage.output("probabilities"), None if last else _TokensOnDemand(stage)

        exit_index, probabilities = route(self._policy, x, run_stage)
        return probabilities[0], exit_index[0]

    def _predict_batch(self, x):
        def run_stage(k, value):
            outputs = self._stages[k](**{self._input_name(k): value})
            return outputs["probabilities"], outputs.get("tokens")

        exit_index, probabilities = route(self._policy, x, run_stage)
        return probabilities, exit_index

    def _input_name(self, k):
        return self._stages[k].entry["inputs"][0]["name"]

    def predict_monolithic(self, images, batch_size=None, allow_non_finite=False):
        """Probabilities of the monolithic (single-graph, last-exit) model.

        ``images`` and ``allow_non_finite`` as in ``predict``.

        Returns:
            dict with ``labels`` (N,) and ``probabilities`` (N, C).
        """
        if self._monolithic is None:
            raise ValueError(
                f"The export in {self.directory!r} has no monolithic model "
                "(export it with monolithic_model=...)."
            )
        x = self.preprocess(images, allow_non_finite=allow_non_finite)
        batch_size = x.shape[0] if batch_size is None else int(batch_size)
        if self.fixed_batch_size is not None:
            batch_size = self.fixed_batch_size
        name = self._monolithic.entry["inputs"][0]["name"]
        chunks = [
            self._monolithic(**{name: x[i : i + batch_size]})["probabilities"]
            for i in range(0, x.shape[0], batch_size)
        ]
        probabilities = np.concatenate(chunks, axis=0)
        return {"labels": probabilities.argmax(axis=-1).astype(np.int64), "probabilities": probabilities}

    # -- timing ---------------------------------------------------------------

    def stage_latency(self, batch_size=1, repeats=50, warmup=5):
        """Median wall time in ms of one call of every stage (and monolithic).

        Inputs are random but of the right shape; stage cost does not depend
        on the values. Returns a dict ``{"stage_1": ms, ..., "monolithic": ms}``.
        """
        if self.fixed_batch_size is not None and batch_size != self.fixed_batch_size:
            raise ValueError(
                f"`batch_size` must be {self.fixed_batch_size} for this bundle (its graphs have a "
                f"fixed batch: a web=True export); got {batch_size!r}."
            )
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
            result[label] = _median_ms(lambda stage=stage, feed=feed: stage(**feed), repeats, warmup)
        return result

    def latency(self, images, repeats=5):
        """Median ms per image of ``predict(images, batch_size=1)``."""
        images = np.asarray(images)
        self.predict(images[:1], batch_size=1)  # load the stages
        return _median_ms(lambda: self.predict(images, batch_size=1), repeats, 0) / max(1, images.shape[0])


def _median_ms(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))
