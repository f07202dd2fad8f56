"""``HoldsPolicy``: the exit policy as one attribute of a model or runtime."""

from keras_dmpo.policy.exit_policy import ExitPolicy


class HoldsPolicy:
    """Mixin for objects that apply one ``ExitPolicy`` (``EarlyExitModel``,
    ``StagedRuntime``): ``policy`` is replaced whole, and its fields are read
    through it. The class defines ``num_exits``.
    """

    @property
    def policy(self):
        """The ``ExitPolicy`` in use. Assign a new one (or its dict) to change it."""
        return self._policy

    @policy.setter
    def policy(self, value):
        if isinstance(value, dict):
            value = ExitPolicy.from_dict(value)
        if not isinstance(value, ExitPolicy):
            raise ValueError(f"`policy` must be an ExitPolicy or its dict; got {type(value).__name__}.")
        if value.num_exits != self.num_exits:
            raise ValueError(f"`policy` is for {value.num_exits} exits; this model has {self.num_exits}.")
        self._policy = value

    @property
    def criterion(self):
        return self._policy.criterion

    @property
    def thresholds(self):
        """The K thresholds (None for ``"patience"``). Assigning a list
        replaces the policy with those thresholds (and no calibration)."""
        thresholds = self._policy.thresholds
        return None if thresholds is None else list(thresholds)

    @thresholds.setter
    def thresholds(self, values):
        self.policy = self._policy.replace(thresholds=values)

    @property
    def temperatures(self):
        """Per-exit temperatures applied before scoring, or None."""
        temperatures = self._policy.temperatures
        return None if temperatures is None else list(temperatures)

    @property
    def patience(self):
        """Exits in a row that must agree (criterion ``"patience"``), else None."""
        return self._policy.patience

    @property
    def calibration(self):
        """The ``CalibrationResult`` behind the policy, or None."""
        return self._policy.calibration
