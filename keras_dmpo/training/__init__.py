"""Training: DMPO's two-phase loss-weight schedule and the tuning recipe."""

from keras_dmpo.training.phase_schedule import PhaseCallback, PhaseSchedule
from keras_dmpo.training.recipe import tuning_optimizer, warmup_cosine

__all__ = ["PhaseCallback", "PhaseSchedule", "tuning_optimizer", "warmup_cosine"]
