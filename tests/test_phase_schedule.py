import numpy as np
import pytest

from keras_dmpo.training.phase_schedule import PhaseSchedule


def test_default_weights_switch_at_half():
    schedule = PhaseSchedule()
    np.testing.assert_allclose(schedule.weights_at(0.0, 4), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(schedule.weights_at(0.49, 4), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(schedule.weights_at(0.5, 4), [1.0, 0.75, 0.5, 0.25])
    assert schedule.phase_at(0.49) == 1 and schedule.phase_at(0.5) == 2


def test_ramp_interpolates_linearly():
    schedule = PhaseSchedule(switch_fraction=0.5, ramp_fraction=0.2)
    phase1, phase2 = schedule.phase_weights(3)
    np.testing.assert_allclose(schedule.weights_at(0.6, 3), 0.5 * phase1 + 0.5 * phase2)
    np.testing.assert_allclose(schedule.weights_at(0.9, 3), phase2)


def test_switch_epoch_overrides_fraction():
    schedule = PhaseSchedule(switch_fraction=0.9, switch_epoch=1)
    assert schedule.switch_point(epochs=4) == 0.25
    with pytest.raises(ValueError, match="`switch_epoch`=4 is beyond the last epoch"):
        PhaseSchedule(switch_epoch=4).switch_point(epochs=4)


def test_config_round_trip():
    schedule = PhaseSchedule(0.3, phase1_weights=[1, 2], ramp_fraction=0.1, distill_temperature=2.0)
    assert PhaseSchedule.from_config(schedule.get_config()).get_config() == schedule.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(switch_fraction=1.5), "`switch_fraction` must be in \\[0, 1\\]"),
        (dict(switch_epoch=-1), "`switch_epoch` must be a non-negative integer"),
        (dict(phase1_weights=[1, -1]), "`phase1_weights` must be finite and non-negative"),
        (dict(phase2_weights=[0, 0]), "`phase2_weights` are all zero"),
        (dict(distill_temperature=0), "`distill_temperature` must be > 0"),
        (dict(ramp_fraction=2), "`ramp_fraction` must be in \\[0, 1\\]"),
    ],
)
def test_bad_schedule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PhaseSchedule(**kwargs)


def test_weights_of_wrong_length():
    with pytest.raises(ValueError, match="`phase1_weights` must have one weight per exit \\(4\\); got 3"):
        PhaseSchedule(phase1_weights=[1, 2, 3]).phase_weights(4)
