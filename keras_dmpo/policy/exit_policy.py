"""``ExitPolicy``: which exit answers, as one frozen, serialisable value."""

import dataclasses

import numpy as np

from keras_dmpo.policy import rule
from keras_dmpo.policy.record import CalibrationResult
from keras_dmpo.policy.survivors import route

# The fields of ``ExitPolicy.to_dict``; ``from_dict`` refuses others.
POLICY_KEYS = ("criterion", "num_exits", "thresholds", "temperatures", "patience", "calibration")
# ``from_dict`` needs these; the others default to None.
REQUIRED_KEYS = ("criterion", "num_exits", "thresholds")
DEFAULT_PATIENCE = 2


@dataclasses.dataclass(frozen=True)
class ExitPolicy:
    """Which exit answers each sample: a criterion and its parameters.

    Validated once, when it is made, and never changed afterwards: a new
    setting is a new policy (``replace``), checked as a whole.

    Args:
        criterion: ``"confidence"``, ``"entropy"`` (score criteria: a sample
            leaves at the first exit whose score reaches its threshold) or
            ``"patience"`` (it leaves when ``patience`` exits in a row agree
            on the label).
        thresholds: score criteria: K thresholds in [0, 1], the last one
            ignored (the last exit always answers). None: 1.0 everywhere,
            practically no early exit until calibrated. Must be None for
            ``"patience"``, which has no thresholds.
        temperatures: None, or K temperatures applied to each exit's
            probabilities before scoring (``rule.temper``).
        patience: ``"patience"`` only: exits in a row that must agree, an
            int in [2, K] (None: 2).
        num_exits: K; needed only when ``thresholds`` does not give it.
        calibration: the ``CalibrationResult`` that chose these parameters,
            or None when they were set by hand.

    Example:

    >>> probabilities = np.array([[[0.6, 0.4]], [[0.7, 0.3]], [[0.2, 0.8]]])
    >>> policy = ExitPolicy("patience", patience=2, num_exits=3)
    >>> policy.assign(probabilities).tolist()
    [1]
    >>> confident = policy.replace(criterion="confidence", thresholds=[0.65, 0.65, 0.0])
    >>> confident.assign(probabilities).tolist(), confident.patience
    ([1], None)
    >>> ExitPolicy.from_dict(confident.to_dict()) == confident
    True
    """

    criterion: str = "confidence"
    thresholds: tuple = None
    temperatures: tuple = None
    patience: int = None
    num_exits: int = None
    calibration: CalibrationResult = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        rule.check_criterion(self.criterion)
        k = self._num_exits()
        if self.criterion == "patience":
            if self.thresholds is not None:
                raise ValueError(
                    f"`thresholds` must be None for criterion='patience' (it compares the exits' "
                    f"labels, not scores); got thresholds={self.thresholds!r}."
                )
            thresholds = None
            if k < 2:
                raise ValueError(
                    f"criterion='patience' needs at least 2 exits (it compares exits in a row); got {k}."
                )
            patience = rule.check_patience(DEFAULT_PATIENCE if self.patience is None else self.patience, k)
        else:
            if self.patience is not None:
                raise ValueError(
                    f"`patience` applies to criterion='patience' only; got patience={self.patience!r} "
                    f"with criterion={self.criterion!r}."
                )
            values = [1.0] * (k - 1) + [0.0] if self.thresholds is None else self.thresholds
            thresholds = tuple(float(t) for t in rule.check_thresholds(values, k))
            patience = None
        calibration = self.calibration
        if isinstance(calibration, dict):
            calibration = CalibrationResult.from_dict(calibration)
        if calibration is not None and not isinstance(calibration, CalibrationResult):
            raise ValueError(
                f"`calibration` must be a CalibrationResult, its dict or None; got {type(calibration).__name__}."
            )
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "temperatures", rule.check_temperatures(self.temperatures, k))
        object.__setattr__(self, "patience", patience)
        object.__setattr__(self, "num_exits", k)
        object.__setattr__(self, "calibration", calibration)

    def _num_exits(self):
        if self.num_exits is not None:
            if isinstance(self.num_exits, bool) or not isinstance(self.num_exits, (int, np.integer)):
                raise ValueError(f"`num_exits` must be a positive integer; got {self.num_exits!r}.")
            if self.num_exits < 1:
                raise ValueError(f"`num_exits` must be a positive integer; got {self.num_exits!r}.")
            return int(self.num_exits)
        for name in ("thresholds", "temperatures"):
            value = getattr(self, name)
            if value is not None:
                try:
                    return len(value)
                except TypeError:
                    raise ValueError(f"`{name}` must be a list of numbers; got {value!r}.") from None
        raise ValueError("Give `num_exits` (or `thresholds`): the policy needs the number of exits.")

    # --- changes ------------------------------------------------------------
    def replace(self, **changes):
        """A new policy with ``changes`` applied, validated as a whole.

        Changing the criterion needs new thresholds for a score criterion
        (the old ones were chosen for other scores) and clears the patience
        when leaving ``"patience"``. Any change drops the calibration record
        unless a new one is given: it described the old parameters.
        """
        unknown = set(changes) - set(POLICY_KEYS)
        if unknown:
            raise ValueError(
                f"Unknown ExitPolicy fields {sorted(unknown)}; expected some of {list(POLICY_KEYS)}."
            )
        criterion = changes.get("criterion", self.criterion)
        if criterion != self.criterion:
            rule.check_criterion(criterion)
            if criterion == "patience":
                changes.setdefault("thresholds", None)
            elif "thresholds" not in changes:
                raise ValueError(
                    f"Changing the criterion from {self.criterion!r} to {criterion!r} needs new "
                    "`thresholds` (the current ones were not chosen for its scores): pass "
                    "thresholds=..., or calibrate again."
                )
            if self.criterion == "patience":
                changes.setdefault("patience", None)
        changes.setdefault("calibration", None)
        return dataclasses.replace(self, **changes)

    # --- the rule -------------------------------------------------------------
    def scores(self, k, probabilities):
        """Exit ``k``'s scores of ``(N, C)`` probabilities (score criteria)."""
        temperature = None if self.temperatures is None else self.temperatures[k]
        return rule.exit_scores(probabilities, self.criterion, temperature)

    def all_scores(self, probabilities):
        """``(K, N)`` scores of every exit's ``(K, N, C)`` probabilities."""
        return np.stack([self.scores(k, p) for k, p in enumerate(probabilities)])

    def start(self, num_samples):
        """The running state of ``num_samples`` samples before stage 1 (only
        ``"patience"`` carries one: the last label and the streak)."""
        if self.criterion != "patience":
            return None
        return {"labels": np.full(num_samples, -1, np.int64), "streak": np.zeros(num_samples, np.int64)}

    def step(self, k, probabilities, state):
        """After stage ``k`` (0-based): which samples answer there.

        ``probabilities`` ``(N, C)`` are exit k's outputs for the samples
        still running, ``state`` theirs (``start``). Returns ``(leave,
        state)``: a bool mask, and the state of the samples that go on.
        """
        if k == self.num_exits - 1:
            return np.ones(np.shape(probabilities)[0], dtype=bool), None
        if self.criterion != "patience":
            return rule.passes(self.scores(k, probabilities), self.thresholds[k]), None
        labels = np.asarray(probabilities).argmax(axis=-1)
        streak = np.where(labels == state["labels"], state["streak"] + 1, 1)
        leave = rule.passes(streak, self.patience)
        stay = ~leave
        return leave, {"labels": labels[stay], "streak": streak[stay]}

    def assign(self, probabilities):
        """The exit (0-based) that answers each sample, from every exit's
        ``(K, N, C)`` probabilities (the same loop as a staged run)."""
        probabilities = np.asarray(probabilities)
        if probabilities.ndim != 3 or probabilities.shape[0] != self.num_exits:
            raise ValueError(
                f"`probabilities` must be ({self.num_exits}, num_samples, num_classes), one slice per "
                f"exit; got shape {probabilities.shape}."
            )
        rows = np.arange(probabilities.shape[1])
        exit_index, _ = route(self, rows, lambda k, alive: (probabilities[k, alive], alive))
        return exit_index

    # --- the on-disk form -----------------------------------------------------
    def to_dict(self):
        """JSON-safe dict: the one on-disk form (model sidecar, manifest,
        benchmark records)."""
        return {
            "criterion": self.criterion,
            "num_exits": self.num_exits,
            "thresholds": None if self.thresholds is None else list(self.thresholds),
            "temperatures": None if self.temperatures is None else list(self.temperatures),
            "patience": self.patience,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }

    @classmethod
    def from_dict(cls, data, argument="policy"):
        """Inverse of ``to_dict``. Errors name ``argument`` and the field."""
        if not isinstance(data, dict):
            raise ValueError(f"`{argument}` must be a dict with keys {list(POLICY_KEYS)}; got {data!r}.")
        unknown = set(data) - set(POLICY_KEYS)
        if unknown:
            raise ValueError(
                f"`{argument}` has unknown keys {sorted(unknown)}; expected some of {list(POLICY_KEYS)}."
            )
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise ValueError(f"`{argument}` lacks the keys {missing} (it needs {list(REQUIRED_KEYS)}).")
        try:
            return cls(**data)
        except ValueError as error:
            raise ValueError(f"`{argument}` is not a valid exit policy: {error}") from None

    @classmethod
    def from_legacy(cls, data, num_exits, argument="settings", calibration=True):
        """A policy from the flat fields written before the policy object
        (criterion, thresholds, temperatures, patience, and with
        ``calibration`` the sidecar's record; K zeros as thresholds for
        patience)."""
        criterion = data.get("criterion", "confidence")
        fields = {
            "criterion": criterion,
            "num_exits": num_exits,
            "thresholds": None if criterion == "patience" else data.get("thresholds"),
            "temperatures": data.get("temperatures"),
            "patience": data.get("patience"),
            "calibration": data.get("calibration") if calibration else None,
        }
        return cls.from_dict(fields, argument)
