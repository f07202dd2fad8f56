"""Shared fixtures: tiny random keras-hub ViTs saved as local presets.

Nothing here downloads: the backbones are built at random and go through
``save_to_preset`` / ``from_preset(dir)``, the same loading code real presets use.
"""

import os

import keras
import numpy as np
import pytest

OPT_IN = {
    "slow": "--run-slow",
    "network": "--run-network",
    "fashion_mnist": "--run-fashion-mnist",
}

TINY_VIT = dict(
    image_shape=(32, 32, 3),
    patch_size=8,
    num_layers=4,
    num_heads=2,
    hidden_dim=32,
    mlp_dim=64,
)


def pytest_addoption(parser):
    for marker, flag in OPT_IN.items():
        parser.addoption(flag, action="store_true", help=f"run tests marked {marker}")


def pytest_collection_modifyitems(config, items):
    for marker, flag in OPT_IN.items():
        if config.getoption(flag):
            continue
        skip = pytest.mark.skip(reason=f"opt-in: pass {flag}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()}"


def build_tiny_vit(seed=0, **overrides):
    import keras_hub

    keras.utils.set_random_seed(seed)
    return keras_hub.models.ViTBackbone(**{**TINY_VIT, **overrides})


@pytest.fixture(scope="session")
def tiny_vit_preset(tmp_path_factory):
    """Directory of a tiny random ViT saved with keras-hub's save_to_preset."""
    path = str(tmp_path_factory.mktemp("presets") / "tiny_vit")
    build_tiny_vit(seed=0).save_to_preset(path)
    return path


@pytest.fixture(scope="session")
def tiny_vit(tiny_vit_preset):
    """The tiny ViT loaded back through ``from_preset(dir)``."""
    import keras_hub

    return keras_hub.models.Backbone.from_preset(tiny_vit_preset)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(3,) + TINY_VIT["image_shape"]).astype("float32")


@pytest.fixture(autouse=True)
def _quiet_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    yield
