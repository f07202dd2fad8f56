"""DMPO's two-phase loss weights, switched by a callback during ``fit``.

Phase 1 puts the weight on the deep exits, leaving the shallow features free to
stay good inputs for the deeper blocks; phase 2 moves it to the early exits,
optionally with self-distillation from the last exit.
"""

import keras
import numpy as np

from keras_dmpo.training.loss_weights import validate_loss_weights


def deep_weights(num_exits):
    """Phase-1 default: ``w_k = k / K`` (1-based k)."""
    return np.arange(1, num_exits + 1, dtype="float64") / num_exits


def early_weights(num_exits):
    """Phase-2 default: ``w_k = (K - k + 1) / K``."""
    return np.arange(num_exits, 0, -1, dtype="float64") / num_exits


class PhaseSchedule:
    """When and how DMPO's loss weights change during training.

    Training progress ``p`` is the fraction of the run's optimizer steps done
    (epoch index times steps per epoch plus the batch index, over epochs times
    steps). Phase 1 holds while ``p < switch_fraction``, then phase 2. Because
    ``p`` is derived from the epoch number, ``initial_epoch`` and
    ``keras.callbacks.BackupAndRestore`` resume in the right phase, and a
    one-epoch run switches mid-epoch.

    Args:
        switch_fraction: fraction of training after which phase 2 starts.
            Defaults to 0.5.
        switch_epoch: if given, phase 2 starts at the beginning of this
            0-based epoch instead (overrides ``switch_fraction``). An epoch
            beyond the last one is an error when training starts.
        phase1_weights: per-exit weights in phase 1; default ``k / K``
            (deep-weighted).
        phase2_weights: per-exit weights in phase 2; default ``(K - k + 1) / K``
            (early-weighted).
        ramp_fraction: fraction of training over which the weights move
            linearly from phase 1 to phase 2, starting at the switch. 0 (the
            default) switches at once.
        distill_temperature: if set, phase 2 adds self-distillation from the
            last exit to the early ones (KL divergence at this temperature,
            weighted like their cross-entropies, times ``distill_weight``).
        distill_weight: scale of the distillation term. Defaults to 1.

    Example:
    >>> schedule = PhaseSchedule(switch_fraction=0.5, ramp_fraction=0.1)
    >>> schedule.weights_at(0.2, num_exits=4)
    array([0.25, 0.5 , 0.75, 1.  ])
    """

    def __init__(
        self,
        switch_fraction=0.5,
        switch_epoch=None,
        phase1_weights=None,
        phase2_weights=None,
        ramp_fraction=0.0,
        distill_temperature=None,
        distill_weight=1.0,
    ):
        if not 0.0 <= float(switch_fraction) <= 1.0:
            raise ValueError(f"`switch_fraction` must be in [0, 1]; got {switch_fraction!r}.")
        if switch_epoch is not None and (
            isinstance(switch_epoch, bool)
            or not isinstance(switch_epoch, (int, np.integer))
            or switch_epoch < 0
        ):
            raise ValueError(f"`switch_epoch` must be a non-negative integer; got {switch_epoch!r}.")
        if not 0.0 <= float(ramp_fraction) <= 1.0:
            raise ValueError(f"`ramp_fraction` must be in [0, 1]; got {ramp_fraction!r}.")
        if distill_temperature is not None and not float(distill_temperature) > 0:
            raise ValueError(f"`distill_temperature` must be > 0; got {distill_temperature!r}.")
        if not float(distill_weight) >= 0:
            raise ValueError(f"`distill_weight` must be >= 0; got {distill_weight!r}.")
        for name, weights in (("phase1_weights", phase1_weights), ("phase2_weights", phase2_weights)):
            if weights is not None:
                validate_loss_weights(weights, len(np.ravel(weights)), name)
        self.switch_fraction = float(switch_fraction)
        self.switch_epoch = switch_epoch
        self.phase1_weights = None if phase1_weights is None else [float(w) for w in np.ravel(phase1_weights)]
        self.phase2_weights = None if phase2_weights is None else [float(w) for w in np.ravel(phase2_weights)]
        self.ramp_fraction = float(ramp_fraction)
        self.distill_temperature = None if distill_temperature is None else float(distill_temperature)
        self.distill_weight = float(distill_weight)

    def phase_weights(self, num_exits):
        """``(phase1, phase2)`` weight arrays for a model with ``num_exits``."""
        phase1 = deep_weights(num_exits) if self.phase1_weights is None else self.phase1_weights
        phase2 = early_weights(num_exits) if self.phase2_weights is None else self.phase2_weights
        return (
            validate_loss_weights(phase1, num_exits, "phase1_weights").astype("float64"),
            validate_loss_weights(phase2, num_exits, "phase2_weights").astype("float64"),
        )

    def switch_point(self, epochs):
        """Training progress in [0, 1] at which phase 2 starts."""
        if self.switch_epoch is None:
            return self.switch_fraction
        if self.switch_epoch >= epochs:
            raise ValueError(
                f"`switch_epoch`={self.switch_epoch} is beyond the last epoch of "
                f"this run (epochs={epochs}, 0-based epochs 0..{epochs - 1})."
            )
        return self.switch_epoch / epochs

    def phase_at(self, progress, epochs=1):
        return 1 if progress < self.switch_point(epochs) else 2

    def weights_at(self, progress, num_exits, epochs=1):
        """Loss weights at training progress ``progress`` in [0, 1]."""
        phase1, phase2 = self.phase_weights(num_exits)
        switch = self.switch_point(epochs)
        if progress < switch:
            return phase1
        if self.ramp_fraction <= 0:
            return phase2
        t = min(1.0, (progress - switch) / self.ramp_fraction)
        return (1.0 - t) * phase1 + t * phase2

    def get_config(self):
        return dict(self.__dict__)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"PhaseSchedule({args})"


class PhaseCallback(keras.callbacks.Callback):
    """Applies a ``PhaseSchedule`` to a ``DMPOClassifier`` during ``fit``.

    Before every training batch it computes the progress from the epoch and
    batch index (so resumed runs land in the right phase), and assigns the
    schedule's weights to the model's ``exit_loss_weights`` variable when they
    change. The phase and the weights are logged (``phase``,
    ``loss_weight_1`` .. ``loss_weight_K``) in the progress bar and ``History``,
    and a line is printed when the phase changes (``verbose=1``).

    Args:
        schedule: a ``PhaseSchedule``; default ``PhaseSchedule()``.
        verbose: 1 prints a line when the phase changes.

    Example:

    >>> from keras_dmpo import DMPOClassifier
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 8])
    >>> model.compile(optimizer="adamw")
    >>> x, y = np.random.rand(8, 28, 28, 3), np.arange(8) % 3
    >>> callback = PhaseCallback(PhaseSchedule(switch_fraction=0.5), verbose=0)
    >>> history = model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[callback])
    >>> [int(p) for p in history.history["phase"]]   # phase 2 (early exits weighted) from mid-run
    [1, 2]
    """

    # DMPOClassifier.fit reads this: no warning about fixed loss weights.
    controls_loss_weights = True

    def __init__(self, schedule=None, verbose=1):
        super().__init__()
        self.schedule = schedule or PhaseSchedule()
        self.verbose = verbose
        self.phase = None
        self._current = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        model = self.model
        if not hasattr(model, "exit_loss_weights"):
            raise ValueError(
                "PhaseCallback needs a DMPOClassifier (a model with "
                f"`exit_loss_weights`); got {type(model).__name__}."
            )
        self._epochs = int(self.params.get("epochs") or 1)
        self._steps = self.params.get("steps")
        self._num_exits = len(model.exits)
        # Validate now: wrong lengths or a switch beyond the last epoch fail
        # before the first step, not in the middle of the run.
        self.schedule.phase_weights(self._num_exits)
        self.schedule.switch_point(self._epochs)
        self._current = None
        self.phase = None

    def progress(self, epoch, batch=0):
        if self._steps:
            return (epoch * self._steps + batch) / (self._epochs * self._steps)
        return epoch / self._epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._apply(self.progress(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        if self._steps:
            self._apply(self.progress(self._epoch, batch))

    def _log(self, logs):
        # Keras' History and progress bar come after user callbacks and share
        # this dict, so what we add here is shown and recorded.
        if logs is None or self._current is None:
            return
        logs["phase"] = self.phase
        for k, weight in enumerate(self._current[0]):
            logs[f"loss_weight_{k + 1}"] = float(weight)

    def on_train_batch_end(self, batch, logs=None):
        self._log(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._log(logs)

    def _apply(self, progress):
        schedule = self.schedule
        weights = schedule.weights_at(progress, self._num_exits, self._epochs)
        phase = schedule.phase_at(progress, self._epochs)
        distill = schedule.distill_weight if (phase == 2 and schedule.distill_temperature) else 0.0
        state = (tuple(np.round(weights, 8)), distill)
        if state == self._current:
            return
        self.model.set_loss_weights(
            weights, distill_weight=distill, distill_temperature=schedule.distill_temperature or 1.0
        )
        self._current = state
        if self.verbose and phase != self.phase:
            print(
                f"\nDMPO phase {phase} at {100 * progress:.0f}% of training: "
                f"loss weights {np.round(weights, 3).tolist()}"
                + (f", distillation T={schedule.distill_temperature}" if distill else "")
            )
        self.phase = phase
