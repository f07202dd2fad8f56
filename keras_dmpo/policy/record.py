"""What a calibrated exit policy gives on its validation data (numpy).

``CalibrationResult`` is the record a calibration leaves with its policy:
the thresholds (or patience) found, the target asked for, and the expected
FLOPs, accuracy and exit shares on the validation samples.
"""

import dataclasses
import math
import numbers

import numpy as np

MODES = ("flops_budget", "max_accuracy_drop")
# Field -> (may it be None, kind): what ``from_dict`` accepts.
_FIELD_KINDS = {
    "thresholds": (True, "numbers"),
    "expected_flops": (False, "number"),
    "expected_fraction": (True, "number"),
    "validation_accuracy": (False, "number"),
    "exit_fractions": (False, "numbers"),
    "budget": (False, "number"),
    "full_model_flops": (True, "number"),
    "num_samples": (False, "int"),
    "max_accuracy_drop": (True, "number"),
    "target_accuracy": (True, "number"),
    "patience": (True, "int"),
}


def _is_number(value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _fits(value, kind):
    if kind == "number":
        return _is_number(value)
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)


def expected_flops(exit_index, flops_per_exit):
    """Mean FLOPs per sample for the given exit indices."""
    flops = np.asarray(flops_per_exit, dtype=np.float64)
    return float(np.mean(flops[np.asarray(exit_index)]))


def exit_accuracy(exit_index, correct):
    """Accuracy when sample ``n`` answers at ``exit_index[n]``.

    Args:
        exit_index: ``(N,)`` 0-based exit indices.
        correct: ``(K, N)`` bool, whether exit k is right on sample n.
    """
    correct = np.asarray(correct, dtype=bool)
    exit_index = np.asarray(exit_index)
    return float(np.mean(correct[exit_index, np.arange(exit_index.size)]))


def exit_fractions(exit_index, num_exits):
    """Fraction of samples answered at each exit."""
    counts = np.bincount(np.asarray(exit_index), minlength=num_exits)
    return (counts / max(1, counts.sum())).tolist()


@dataclasses.dataclass
class CalibrationResult:
    """Calibrated thresholds and what they give on the validation data.

    Attributes:
        thresholds: K floats, the last 0.0 (ignored: the last exit answers);
            None for criterion ``"patience"``, which has none.
        expected_flops: mean FLOPs per sample on the validation data.
        expected_fraction: ``expected_flops / full_model_flops`` (None if the
            full model's FLOPs were not given).
        validation_accuracy: accuracy on the validation data.
        exit_fractions: K fractions of samples answered at each exit.
        budget: the FLOPs budget (absolute, per sample).
        full_model_flops: "100%", or None.
        num_samples: validation samples used.
        mode: ``"flops_budget"`` (most accurate within ``budget``) or
            ``"max_accuracy_drop"`` (fewest FLOPs within the drop).
        max_accuracy_drop: the drop asked for (accuracy mode), else None.
        target_accuracy: the last exit's validation accuracy minus the drop
            (accuracy mode), else None.
        patience: the patience chosen (criterion ``"patience"``), else None.
    """

    thresholds: list
    expected_flops: float
    expected_fraction: object
    validation_accuracy: float
    exit_fractions: list
    budget: float
    full_model_flops: object = None
    num_samples: int = 0
    mode: str = "flops_budget"
    max_accuracy_drop: object = None
    target_accuracy: object = None
    patience: object = None

    def to_dict(self):
        """JSON-safe dict (floats, ints, lists, None)."""
        return {
            "thresholds": None if self.thresholds is None else [float(t) for t in self.thresholds],
            "expected_flops": float(self.expected_flops),
            "expected_fraction": None if self.expected_fraction is None else float(self.expected_fraction),
            "validation_accuracy": float(self.validation_accuracy),
            "exit_fractions": [float(f) for f in self.exit_fractions],
            "budget": float(self.budget),
            "full_model_flops": None if self.full_model_flops is None else float(self.full_model_flops),
            "num_samples": int(self.num_samples),
            "mode": self.mode,
            "max_accuracy_drop": None if self.max_accuracy_drop is None else float(self.max_accuracy_drop),
            "target_accuracy": None if self.target_accuracy is None else float(self.target_accuracy),
            "patience": None if self.patience is None else int(self.patience),
        }

    @classmethod
    def from_dict(cls, data):
        """Inverse of ``to_dict``; unknown or missing keys raise ``ValueError``.

        Records written before patience policies had no thresholds hold
        K zeros there; they read as None.
        """
        if not isinstance(data, dict):
            raise ValueError(f"A calibration record must be a dict; got {type(data).__name__}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"Unknown CalibrationResult keys {sorted(unknown)}; expected {sorted(fields)}.")
        data = dict(data)
        if data.get("patience") is not None:
            data["thresholds"] = None
        for key, (optional, kind) in _FIELD_KINDS.items():
            if key in data and not ((optional and data[key] is None) or _fits(data[key], kind)):
                expected = {"number": "a finite number", "int": "an integer", "numbers": "a list of numbers"}[
                    kind
                ]
                raise ValueError(
                    f"Calibration record field {key!r} must be {expected}"
                    f"{' or None' if optional else ''}; got {data[key]!r}."
                )
        if data.get("mode", "flops_budget") not in MODES:
            raise ValueError(f"Calibration record field 'mode' must be one of {MODES}; got {data['mode']!r}.")
        try:
            return cls(**data)
        except TypeError as error:
            raise ValueError(f"Calibration record is missing fields: {error}") from None
