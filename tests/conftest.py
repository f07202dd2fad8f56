"""Shared fixtures: tiny random keras-hub ViTs saved as local presets.

Nothing here downloads: the backbones are built at random and go through
``save_to_preset`` / ``from_preset(dir)``, the same loading code real presets use.
"""

import os

import keras
import numpy as np
import pytest

OPT_IN = {"slow": "--run-slow", "network": "--run-network", "fashion_mnist": "--run-fashion-mnist"}

TINY_VIT = dict(image_shape=(32, 32, 3), patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64)


def pytest_addoption(parser):
    for marker, flag in OPT_IN.items():
        parser.addoption(flag, action="store_true", help=f"run tests marked {marker}")


# Tests marked backend_independent give the same result under every
# KERAS_BACKEND: they run their model code in a subprocess with a fixed
# backend (XLA's cost analysis runs under JAX), or touch only files and
# numpy. scripts/test_all_backends.sh sets this variable to the one backend
# that runs them; a plain pytest (variable unset) runs them all.
BACKEND_INDEPENDENT_ON = "KERAS_DMPO_BACKEND_INDEPENDENT_ON"


def pytest_collection_modifyitems(config, items):
    only_on = os.environ.get(BACKEND_INDEPENDENT_ON)
    if only_on and only_on != keras.backend.backend():
        skip = pytest.mark.skip(
            reason=f"backend-independent: this suite runs it under KERAS_BACKEND={only_on} ({BACKEND_INDEPENDENT_ON})"
        )
        for item in items:
            if "backend_independent" in item.keywords:
                item.add_marker(skip)
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


# Tiny random members of the other supported families (same 32 px, patch 8
# grid as TINY_VIT). DINOv2: 2 register tokens and LayerScale 0.5 so the
# token layout and the scales are exercised; DeiT: class + distillation token.
TINY_DINOV2 = dict(
    patch_size=8,
    num_layers=4,
    hidden_dim=32,
    num_heads=2,
    intermediate_dim=64,
    image_shape=(32, 32, 3),
    position_embedding_shape=(48, 48, 3),
    num_register_tokens=2,
    layer_scale_init_value=0.5,
    use_mask_token=False,
)
TINY_DEIT = dict(
    image_shape=(32, 32, 3), patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, intermediate_dim=64
)


def build_tiny_backbone(family, seed=0):
    """A tiny random backbone of ``family`` ("vit", "deit" or "dinov2")."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    if family == "vit":
        return build_tiny_vit(seed=seed)
    if family == "deit":
        return keras_hub.models.DeiTBackbone(**TINY_DEIT)
    backbone = keras_hub.models.DINOV2Backbone(**TINY_DINOV2)
    # Random LayerScale and cls/register tokens, not their constant inits.
    for layer in backbone.encoder.layers:
        for scale in (layer.layer_scale1, layer.layer_scale2):
            scale.lambda1.assign(np.random.default_rng(seed).uniform(0.2, 1.0, (32,)))
    return backbone


@pytest.fixture(scope="session")
def family_presets(tmp_path_factory):
    """``{family: preset directory}`` for tiny random DeiT and DINOv2 backbones."""
    root = tmp_path_factory.mktemp("family_presets")
    paths = {}
    for family in ("deit", "dinov2"):
        paths[family] = str(root / family)
        build_tiny_backbone(family).save_to_preset(paths[family])
    return paths


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
