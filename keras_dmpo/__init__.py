"""keras_dmpo: Decoupled Multi-Predictor Optimization for early-exit ViTs in Keras 3.

The package namespace is lazy: ``import keras_dmpo.litert`` (the phone- or
server-side runtime) must not pull in Keras, keras-hub or TensorFlow, so the
public names below are imported on first attribute access only.
"""

import importlib

from keras_dmpo.version import __version__

# public name -> (module that defines it, attribute name there)
_LAZY_ATTRIBUTES = {
    "DMPOClassifier": ("keras_dmpo.models.dmpo_classifier", "DMPOClassifier"),
    "ViTStages": ("keras_dmpo.models.vit_stages", "ViTStages"),
    "PhaseSchedule": ("keras_dmpo.training.phase_schedule", "PhaseSchedule"),
    "PhaseCallback": ("keras_dmpo.training.phase_schedule", "PhaseCallback"),
    "tuning_optimizer": ("keras_dmpo.recipe", "tuning_optimizer"),
    "EarlyExitModel": ("keras_dmpo.inference.early_exit", "EarlyExitModel"),
    "ExitPolicy": ("keras_dmpo.policy.exit_policy", "ExitPolicy"),
    # ``keras_dmpo.presets`` is the dict short name -> description.
    "presets": ("keras_dmpo.preset_registry", "PRESETS"),
}
_LAZY_SUBMODULES = {
    "layers",
    "models",
    "training",
    "inference",
    "export",
    "litert",
    "datasets",
    "cli",
    "policy",
}

__all__ = sorted(list(_LAZY_ATTRIBUTES) + list(_LAZY_SUBMODULES) + ["__version__"])


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        module_name, attribute = _LAZY_ATTRIBUTES[name]
        value = getattr(importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"keras_dmpo.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_dmpo' has no attribute {name!r}")


def __dir__():
    return __all__
