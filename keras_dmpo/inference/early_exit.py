"""EarlyExitModel: batched early-exit inference, calibration and export."""

import os

import keras
import numpy as np

from keras_dmpo import policy as exit_policy
from keras_dmpo.inference import saving, stage_export
from keras_dmpo.inference.flops import flops_of
from keras_dmpo.inference.stage_runner import StageRunner, pad_rows
from keras_dmpo.inputs import check_images, check_labels, is_stream, iter_batches
from keras_dmpo.policy import ExitPolicy
from keras_dmpo.policy.holder import HoldsPolicy


def _check_batch_size(batch_size):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")


def _softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


class EarlyExitModel(HoldsPolicy):
    """Batched early-exit inference for a ``DMPOClassifier``.

    Which exit answers is one value, ``self.policy``, a frozen
    ``keras_dmpo.policy.ExitPolicy``: with ``"confidence"`` (max softmax
    probability) or ``"entropy"`` (``1 - H(p) / ln C``) a sample leaves at the
    first exit whose score, in [0, 1], reaches that exit's threshold,
    optionally after a per-exit temperature (``fit_temperatures``); with
    ``"patience"`` it leaves when ``patience`` exits in a row agree on the
    label. The last exit always answers. ``calibrate``, ``fit_temperatures``
    or the user replace the policy whole (``ee.policy =
    ee.policy.replace(criterion="entropy", thresholds=...)``), so it is never
    half-changed. ``predict`` runs stage by stage on whole batches and sends
    only the samples that have not exited to the next stage.

    FLOPs follow the convention a multiply-add = 2 FLOPs. ``flops_per_exit[k]``
    is the cumulative cost per image of answering at exit k (embedding, blocks,
    trunk adapters, every bypass and head on the way). ``full_model_flops`` is
    the same backbone with only the last head: "100%".

    Args:
        model: a ``DMPOClassifier``.
        thresholds: K values in [0, 1] (the last is ignored). ``None``: 1.0
            everywhere, i.e. practically no early exit until ``calibrate``.
        criterion: ``"confidence"``, ``"entropy"`` or ``"patience"``.
        temperatures: None, or K per-exit temperatures applied to the
            probabilities before scoring (``fit_temperatures`` fits them).
        patience: for ``criterion="patience"``: exits in a row that must agree
            (default 2; ``calibrate`` chooses it).
        policy: instead of the four above, an ``ExitPolicy`` (or its dict).

    Example (an untuned model and random images, to show the calls):

    >>> from keras_dmpo import DMPOClassifier
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 4, 8])
    >>> x_val, y_val = np.random.rand(32, 28, 28, 3), np.arange(32) % 3
    >>> ee = EarlyExitModel(model, criterion="confidence")
    >>> calibration = ee.calibrate(x_val, y_val, flops_budget=0.5)
    >>> calibration.expected_fraction <= 0.5
    True
    >>> out = ee.predict(x_val)
    >>> sorted(out)
    ['exit_index', 'flops', 'labels', 'probabilities']
    >>> ee.policy = ee.policy.replace(criterion="entropy", thresholds=[0.9, 0.9, 0.0])
    >>> ee.criterion, ee.calibration is None
    ('entropy', True)
    >>> curve = ee.curve(x_val, y_val, budgets=(0.5, 1.0))
    >>> [row["budget"] for row in curve.rows]
    [0.5, 1.0]
    """

    def __init__(
        self, model, thresholds=None, criterion="confidence", temperatures=None, patience=None, policy=None
    ):
        if not hasattr(model, "exits") or not hasattr(model, "build_stage_models"):
            raise ValueError(
                "`model` must be a keras_dmpo.DMPOClassifier (a model with exits); got "
                f"{type(model).__name__}. Build one with DMPOClassifier.from_preset(...)."
            )
        self.model = model
        self.exits = tuple(model.exits)
        self.num_exits = len(self.exits)
        if policy is None:
            policy = ExitPolicy(criterion, thresholds, temperatures, patience, num_exits=self.num_exits)
        elif (
            thresholds is not None
            or temperatures is not None
            or patience is not None
            or criterion != "confidence"
        ):
            raise ValueError("Give `policy` or the policy's fields (thresholds, criterion, ...), not both.")
        self.policy = policy
        cost = flops_of(model)  # read from the model's own layers
        self.flops_per_exit = [float(f) for f in cost.flops_per_exit]
        self.stage_flops = [float(f) for f in cost.stage_flops]
        self.full_model_flops = float(cost.full_model_flops)
        self._stage_models = None
        self._runners = None
        # sha256 of the .keras file this object was loaded from or saved to.
        self.model_sha256 = None

    # --- configuration ------------------------------------------------------
    @property
    def flops_fractions(self):
        return [f / self.full_model_flops for f in self.flops_per_exit]

    @property
    def stage_models(self):
        if self._stage_models is None:
            self._stage_models = self.model.build_stage_models(probabilities=True)
        return self._stage_models

    @property
    def _stage_runners(self):
        # Compiled once per EarlyExitModel; see stage_runner.py for why not
        # ``predict_on_batch``.
        if self._runners is None:
            self._runners = [StageRunner(stage) for stage in self.stage_models]
        return self._runners

    # --- inference -----------------------------------------------------------
    def _check_x(self, x, argument="x", allow_non_finite=False, hint=None):
        check_images(x, self.model.image_shape, argument, allow_non_finite=allow_non_finite, hint=hint)
        if len(x) == 0:
            raise ValueError(f"`{argument}` is empty: no images.")

    def _batches(self, x, y=None, batch_size=64, allow_non_finite=False, hint=None):
        """``(images, labels)`` batches of arrays or a stream, each checked;
        an array is checked whole first (one message for all bad samples)."""
        _check_batch_size(batch_size)
        streamed = is_stream(x)
        if not streamed:
            self._check_x(
                np.asarray(x) if not hasattr(x, "shape") else x, allow_non_finite=allow_non_finite, hint=hint
            )
        for index, (images, labels) in enumerate(iter_batches(x, y, batch_size)):
            if streamed:
                self._check_x(images, f"x (batch {index})", allow_non_finite=allow_non_finite, hint=hint)
            yield images.astype("float32", copy=False), labels

    def exit_probabilities(self, x, batch_size=64):
        """Probabilities of every exit for every sample, ``(K, N, C)``; ``x``
        an array or a stream of batches (read one batch at a time)."""
        probabilities, _ = self._exit_probabilities_and_labels(x, None, batch_size)
        return probabilities

    def _exit_probabilities_and_labels(self, x, y, batch_size, hint=None):
        parts, labels, size = [], [], None
        for images, batch_labels in self._batches(x, y, batch_size, hint=hint):
            n = len(images)
            # Pad every batch to one size: on JAX every new batch shape is a
            # new XLA compilation of the whole model (seconds), on TF a trace.
            size = size or max(batch_size, n)
            logits = self.model.predict_on_batch(pad_rows(images, max(size, n)))
            parts.append(
                np.stack(
                    [
                        _softmax(keras.ops.convert_to_numpy(logits[f"exit_{k + 1}"]).astype("float64")[:n])
                        for k in range(self.num_exits)
                    ]
                )
            )
            if batch_labels is not None:
                labels.append(np.asarray(batch_labels))
        return np.concatenate(parts, axis=1), (np.concatenate(labels) if labels else None)

    def predict(self, x, batch_size=64, verbose=0, allow_non_finite=False):
        """Early-exit predictions.

        Args:
            x: images ``(N, H, W, C)``, or a ``tf.data.Dataset`` /
                ``keras.utils.PyDataset`` of batches (read one at a time).
            batch_size: the most samples one stage call runs (arrays are
                read in batches of this size; a stream brings its own).
                The survivors of consecutive batches (up to
                ``SURVIVOR_POOL_IMAGES`` images) go through each deeper stage
                together, so that deep stages run full calls rather than a
                few rows per batch.
            verbose: 1 shows a progress bar.
            allow_non_finite: let images with NaN or inf pixels through
                (their outputs are meaningless: NaN probabilities, answered
                at the last exit). By default they raise a ``ValueError``
                naming the first such samples.

        Returns:
            dict of numpy arrays: ``labels`` (N,), ``probabilities`` (N, C) of
            the exit that answered, ``exit_index`` (N,) 0-based position in
            ``exits``, ``flops`` (N,) FLOPs spent on each sample.
        """
        parts = list(self.iter_predict(x, batch_size, verbose, allow_non_finite))
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0] if key != "y"}

    def iter_predict(self, x, batch_size=64, verbose=0, allow_non_finite=False):
        """``predict`` one batch at a time: yields the same dict per batch,
        plus ``"y"``, the batch's labels where the stream has them (else
        None). For data larger than memory (``keras-dmpo predict`` writes
        its CSV from it as it goes)."""
        hint = (
            "Clean or drop those samples, or pass allow_non_finite=True to run "
            "them anyway (their outputs are then meaningless)."
        )
        stages = self._stage_runners
        total = None if is_stream(x) else len(x)
        progbar = keras.utils.Progbar(total, verbose=verbose) if verbose else None

        def run_stage(k, inputs):
            out = stages[k](inputs, batch_size)
            return out["probabilities"], out.get("tokens")

        done, flops_per_exit = 0, np.asarray(self.flops_per_exit)
        for block in _pooled(self._batches(x, None, batch_size, allow_non_finite, hint)):
            images = np.concatenate([images for images, _ in block]) if len(block) > 1 else block[0][0]
            index, answers = exit_policy.route(self._policy, images, run_stage)
            start = 0
            for batch_images, labels in block:
                rows = slice(start, start + len(batch_images))
                start = rows.stop
                done += len(batch_images)
                if progbar:
                    progbar.update(done)
                yield {
                    "labels": answers[rows].argmax(-1),
                    "probabilities": answers[rows].astype("float32"),
                    "exit_index": index[rows].astype("int64"),
                    "flops": flops_per_exit[index[rows]],
                    "y": labels,
                }

    # --- calibration -------------------------------------------------------
    def _validation_arrays(self, x, y, batch_size):
        """Per-exit probabilities and integer labels: all calibration keeps
        of the validation data (never the images)."""
        if not is_stream(x):
            if y is None:
                raise ValueError("`y` is required: calibration needs labelled validation data.")
            check_labels(y, self.model.num_classes, "y", num_samples=len(x))
        probabilities, labels = self._exit_probabilities_and_labels(
            x, y, batch_size, hint="Calibration needs finite validation images: clean or drop those samples."
        )
        if labels is None:
            raise ValueError("`y` is required: calibration needs labelled validation data.")
        check_labels(labels, self.model.num_classes, "y", num_samples=probabilities.shape[1])
        if labels.ndim == 2 and labels.shape[1] == self.model.num_classes and self.model.num_classes > 1:
            labels = labels.argmax(-1)
        return probabilities, labels.reshape(-1).astype("int64")

    def calibrate(self, x, y=None, flops_budget=None, max_accuracy_drop=None, batch_size=64):
        """Choose the exit policy's parameters on validation data, for a FLOPs
        budget or for an accuracy target, and adopt the new policy.

        Args:
            x, y: validation images and labels (arrays), or a dataset yielding
                ``(x, y)``.
            flops_budget: the most accurate thresholds whose expected FLOPs
                fit: a fraction in (0, 1] of ``full_model_flops``, or an
                absolute number of FLOPs per image (> 1). The default when
                ``max_accuracy_drop`` is not given: 0.3.
            max_accuracy_drop: instead, the fewest expected FLOPs whose
                validation accuracy is at least the last exit's minus this
                fraction (0.01 = one point). Give one of the two, not both.
            batch_size: inference batch size.

        The criterion and temperatures of the current policy are kept; with
        ``"patience"`` the patience is chosen instead of thresholds.

        Returns:
            The ``CalibrationResult`` (also ``self.calibration``): thresholds
            (or patience), the mode, expected FLOPs and fraction, validation
            accuracy, and the fraction of samples at each exit. Deterministic
            for the same data (thresholds at score midpoints).
        """
        target = exit_policy.make_target(flops_budget, max_accuracy_drop)
        if "flops_budget" in target:  # refuse a bad budget before running the model
            exit_policy.budget_flops(target["flops_budget"], self.flops_per_exit, self.full_model_flops)
        probabilities, labels = self._validation_arrays(x, y, batch_size)
        return self.calibrate_from_probabilities(probabilities, labels, target)

    def calibrate_from_probabilities(self, probabilities, labels, target):
        """``calibrate`` from per-exit probabilities already computed
        (``(K, N, C)``, ``exit_probabilities``) and integer labels; ``target``
        as in ``keras_dmpo.policy.calibrate``. Adopts and returns the record."""
        self.policy = exit_policy.calibrate(
            probabilities,
            labels,
            self.flops_per_exit,
            self.full_model_flops,
            target,
            criterion=self.criterion,
            temperatures=self._policy.temperatures,
        )
        return self.calibration

    def fit_temperatures(self, x, y=None, batch_size=64):
        """Fit one temperature per exit on validation data (negative
        log-likelihood) and use them from now on. The thresholds stay; they
        were chosen for other scores, so calibrate again afterwards.

        Returns:
            dict: ``temperatures``, and the expected calibration error of
            each exit's confidence on this data before and after
            (``ece_before``, ``ece_after``).
        """
        probabilities, labels = self._validation_arrays(x, y, batch_size)
        temperatures = exit_policy.fit_temperatures(probabilities, labels)
        self.policy = self._policy.replace(temperatures=temperatures)
        return {
            "temperatures": temperatures,
            "ece_before": [exit_policy.expected_calibration_error(p, labels) for p in probabilities],
            "ece_after": [
                exit_policy.expected_calibration_error(exit_policy.rule.temper(p, t), labels)
                for p, t in zip(probabilities, temperatures)
            ],
        }

    def curve(
        self, x_val, y_val=None, x_test=None, y_test=None, budgets=exit_policy.DEFAULT_BUDGETS, batch_size=64
    ):
        """Accuracy against FLOPs for a sweep of budgets (thresholds from
        validation, accuracy on test), beside each exit alone.

        The budgets are calibrated from the smallest up, each search also
        starting from the previous budget's thresholds: validation accuracy
        never falls as the budget grows. Budgets below the first exit's cost
        are left out. Does not change this model's policy; each row holds
        its own (``ee.policy = row["policy"]`` adopts it). Returns an
        ``AccuracyFlopsCurve``.
        """
        val_probs, val_labels = self._validation_arrays(x_val, y_val, batch_size)
        if x_test is None:
            test_probs, test_labels = val_probs, val_labels
        else:
            test_probs, test_labels = self._validation_arrays(x_test, y_test, batch_size)
        return self.curve_from_probabilities(val_probs, val_labels, test_probs, test_labels, budgets)

    def curve_from_probabilities(
        self,
        val_probabilities,
        val_labels,
        test_probabilities,
        test_labels,
        budgets=exit_policy.DEFAULT_BUDGETS,
    ):
        """``curve`` from per-exit probabilities already computed (``(K, N, C)``
        from ``exit_probabilities``) and integer labels ``(N,)``: re-reads a
        trained model's outputs under other budgets without running it again."""
        for name, probs in (
            ("val_probabilities", val_probabilities),
            ("test_probabilities", test_probabilities),
        ):
            shape = np.shape(probs)
            if len(shape) != 3 or shape[0] != self.num_exits or shape[2] != self.model.num_classes:
                raise ValueError(
                    f"`{name}` has shape {shape}; expected ({self.num_exits}, num_samples, "
                    f"{self.model.num_classes}) (exits, samples, classes), matching the labels."
                )
        return exit_policy.curve(
            val_probabilities,
            val_labels,
            test_probabilities,
            test_labels,
            self.flops_per_exit,
            self.full_model_flops,
            self.exits,
            budgets,
            criterion=self.criterion,
            temperatures=self._policy.temperatures,
        )

    # --- persistence -------------------------------------------------------
    def get_config(self):
        return {
            "policy": self._policy.to_dict(),
            "exits": list(self.exits),
            "flops_per_exit": self.flops_per_exit,
            "full_model_flops": self.full_model_flops,
        }

    def save(self, path):
        """Save the model (``.keras``) and the early-exit settings beside it
        (``<name>.early_exit.json``: the policy and its calibration).

        Crash-safe: both files are written under temporary names in the same
        directory and renamed into place with ``os.replace``. The sidecar
        records the sha256 of the model file it belongs to; while the model
        is being replaced it also carries the previous model's settings
        (``"previous"``), so a reader, or a process killed at any moment, sees
        either the old model with its own policy or the new one with its
        own, never a mixture. Concurrent saves to the same path queue on a
        lock file beside it.
        """
        self.model_sha256 = saving.save_with_settings(self.model, self.get_config(), path)
        return os.fspath(path)

    def save_settings(self, json_path, model_path=None):
        """Write the early-exit settings (the policy and its calibration)
        to ``json_path`` atomically, bound to the sha256 of ``model_path``.

        Args:
            json_path: the sidecar, normally ``sidecar_path(model_path)``.
            model_path: the ``.keras`` file these settings belong to (default:
                the one ``json_path`` is named after; a JSON named otherwise
                is written without a model hash). When this object was
                loaded from or saved to that file and the file has changed
                since, nothing is written (``ValueError``): the policy would
                be stored for another model.
        """
        saving.save_settings(self.get_config(), json_path, model_path, self.model_sha256)

    @classmethod
    def load(cls, path, compile=True):
        """Load a ``.keras`` model and, when present, its early-exit JSON.

        The sidecar's recorded ``model_sha256`` must match the model file
        (sidecars written before that field existed are accepted as they are);
        a mismatch raises ``ValueError``: a stale policy is never applied to
        another model. Sidecars written before the policy object (flat
        criterion/thresholds fields) still load.

        ``compile=False`` leaves the saved optimizer, loss and metrics out,
        for inference and export: the optimizer's config names the module of
        the backend it was trained on (e.g. torch's), which loading it would
        import.
        """
        model, settings, digest, settings_path = saving.load_with_settings(path, compile=compile)
        ee = cls(model) if settings is None else cls._from_settings(model, settings, settings_path)
        ee.model_sha256 = digest
        return ee

    @classmethod
    def _from_settings(cls, model, settings, settings_path):
        num_exits = len(model.exits)
        try:
            if "policy" in settings:
                policy = ExitPolicy.from_dict(settings["policy"], f"{settings_path}['policy']")
            else:
                policy = ExitPolicy.from_legacy(settings, num_exits, settings_path)
            return cls(model, policy=policy)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"Early-exit settings {settings_path!r} do not fit the model: {error}") from None

    # --- export ---------------------------------------------------------------
    def export_tflite(
        self,
        directory,
        quantization=None,
        representative_data=None,
        overwrite=False,
        class_names=None,
        web=False,
    ):
        """Write TFLite stage graphs, a monolithic graph and ``manifest.json``.

        On the TensorFlow backend the conversion runs in this process; on JAX
        and torch the model is saved and converted in a
        ``KERAS_BACKEND=tensorflow`` subprocess, transparently.

        Args:
            directory: output directory (must be empty or absent unless
                ``overwrite=True``).
            quantization: ``None`` (float32); a TFLite converter mode
                ``"dynamic"``, ``"float16"`` or ``"int8"``; a LiteRT quantizer
                recipe by name (``"weight_only_int8"``,
                ``"weight_only_int4"``, ``"dynamic_int8"``,
                ``"dynamic_int4_blockwise"``, ``"static_int8"``,
                ``"static_int16"``, ``"mixed"``: static int8 with LayerNorm,
                softmax, GELU and the covariance root in float;
                ``"int8_matmuls"``: static int8 on the fully connected layers
                and the patch embedding only) or a list of
                the quantizer's rules (``keras_dmpo.export.quantizer``). The
                manifest records a recipe as applied.
            representative_data: calibration images (in [0, 1], what
                ``predict`` takes) for ``"int8"``, ``"static_int8"``,
                ``"static_int16"``, ``"mixed"`` and recipes with static
                activations (at least 32 for a recipe; 100-500 typical
                images). Later stages are calibrated on the tokens the
                earlier float stages compute from them.
            overwrite: replace an existing non-empty directory.
            class_names: optional names stored in the manifest.
            web: graphs with a fixed batch of 1, which the browser runtime
                (LiteRT.js, ``keras-dmpo web``) needs; ``StagedRuntime`` runs
                them one image at a time.

        Returns:
            The manifest (dict).
        """
        return stage_export.export(
            self,
            "tflite",
            directory,
            quantization=quantization,
            representative_data=representative_data,
            overwrite=overwrite,
            class_names=class_names,
            web=web,
        )

    def export_onnx(self, directory, overwrite=False, class_names=None):
        """Write the stage graphs as ONNX with a manifest (TF subprocess on JAX/torch)."""
        return stage_export.export(self, "onnx", directory, overwrite=overwrite, class_names=class_names)

    def export_spec(self, class_names=None):
        """The ``keras_dmpo.export.spec.ExportSpec`` of this model as it stands
        (exits, thresholds, criterion, FLOPs, image shape, preprocessing)."""
        return stage_export.export_spec(self, class_names)


# Consecutive batches are pooled up to this many images, and their survivors
# go through each deeper stage together, in calls of ``batch_size`` rows.
# Batch by batch, a deep stage sees a few survivors per call: on JAX each call
# pads them to a compiled shape, and every backend pays the call's fixed cost
# for a few rows. Memory holds this many images and their tokens.
SURVIVOR_POOL_IMAGES = 512


def _pooled(batches, images=None):
    """Lists of consecutive ``(images, labels)`` batches, each list closed
    once it holds ``images`` (default ``SURVIVOR_POOL_IMAGES``) or more."""
    images = images or SURVIVOR_POOL_IMAGES
    block, held = [], 0
    for batch in batches:
        block.append(batch)
        held += len(batch[0])
        if held >= images:
            yield block
            block, held = [], 0
    if block:
        yield block
