"""Training: DMPO's two-phase loss-weight schedule."""

from keras_dmpo.training.phase_schedule import PhaseCallback, PhaseSchedule

__all__ = ["PhaseCallback", "PhaseSchedule"]
