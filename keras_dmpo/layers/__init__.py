"""DMPO layers: trunk adapter, bypass, covariance pooling and exit heads."""

from keras_dmpo.layers.bypass import BypassAdapter
from keras_dmpo.layers.covariance_pooling import CovariancePooling, newton_schulz_sqrt
from keras_dmpo.layers.exit_heads import CovarianceExitHead, LinearExitHead
from keras_dmpo.layers.parallel_adapter import ParallelAdapter

__all__ = [
    "BypassAdapter",
    "CovarianceExitHead",
    "CovariancePooling",
    "LinearExitHead",
    "ParallelAdapter",
    "newton_schulz_sqrt",
]
