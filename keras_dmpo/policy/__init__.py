"""Exit policies: the early-exit rule, its calibration and its curves (numpy only).

Which exit answers each sample is one value, an ``ExitPolicy``. This package
holds everything about it that needs no model: the rule (``rule``), the
loop over the samples still in play (``survivors.route``), the search for
thresholds or patience on validation outputs (``calibrate``, built on
``search``), temperature scaling (``temperature``) and accuracy-FLOPs curves
(``curve``). ``keras_dmpo.inference.EarlyExitModel`` and the LiteRT
``StagedRuntime`` both use it; it imports numpy only.

Example (re-calibrating stored outputs, no model needed):

>>> import numpy as np
>>> from keras_dmpo import policy
>>> rng = np.random.default_rng(0)
>>> probabilities = rng.dirichlet(np.ones(3), size=(2, 40))   # 2 exits, 40 samples
>>> labels = probabilities[1].argmax(-1)
>>> chosen = policy.calibrate(probabilities, labels, flops_per_exit=[1.0, 2.0],
...                           full_model_flops=2.0, target=0.75)
>>> chosen.criterion, chosen.calibration.expected_flops <= 1.5
('confidence', True)
>>> policy.ExitPolicy.from_dict(chosen.to_dict()) == chosen
True
"""

from keras_dmpo.policy import rule
from keras_dmpo.policy.calibrate import (
    DEFAULT_BUDGETS,
    DEFAULT_FLOPS_BUDGET,
    budget_flops,
    calibrate,
    calibrate_many,
    check_accuracy_drop,
    curve,
    make_target,
    reachable,
)
from keras_dmpo.policy.curves import AccuracyFlopsCurve
from keras_dmpo.policy.exit_policy import ExitPolicy
from keras_dmpo.policy.record import CalibrationResult
from keras_dmpo.policy.survivors import route
from keras_dmpo.policy.temperature import expected_calibration_error, fit_temperatures

__all__ = [
    "AccuracyFlopsCurve",
    "CalibrationResult",
    "DEFAULT_BUDGETS",
    "DEFAULT_FLOPS_BUDGET",
    "ExitPolicy",
    "budget_flops",
    "calibrate",
    "calibrate_many",
    "check_accuracy_drop",
    "curve",
    "expected_calibration_error",
    "fit_temperatures",
    "make_target",
    "reachable",
    "route",
    "rule",
]
