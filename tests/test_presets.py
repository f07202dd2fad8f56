"""The shipped ``dmpo_vit_tiny`` preset loads offline on every backend."""

import os

import numpy as np
import pytest

import keras_dmpo
from keras_dmpo import preset_registry

EXPECTED_CONFIG = dict(
    image_shape=[28, 28, 3], patch_size=[4, 4], num_layers=8, num_heads=4, hidden_dim=128, mlp_dim=256
)
PRESET_DIR = preset_registry.preset_path("dmpo_vit_tiny")
# Class token (first 8 features) for _fixed_images(), measured on torch when the
# preset was shipped; every backend must reproduce it.
REFERENCE_CLASS_TOKEN = [
    [1.22635, -0.31029, 1.34293, 2.36849, -0.89456, 1.55604, -1.10137, -1.17592],
    [1.22142, -0.27803, 1.36277, 2.28367, -0.87302, 1.61148, -1.12326, -1.20048],
]


def _fixed_images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(2, 28, 28, 3)).astype("float32")


def test_presets_lists_short_name():
    assert "dmpo_vit_tiny" in keras_dmpo.presets
    assert "28x28" in keras_dmpo.presets["dmpo_vit_tiny"]


def test_preset_files_are_in_the_package():
    for name in ("config.json", "metadata.json", "model.weights.h5", "image_converter.json"):
        assert os.path.isfile(os.path.join(PRESET_DIR, name)), name
    size = sum(os.path.getsize(os.path.join(PRESET_DIR, f)) for f in os.listdir(PRESET_DIR))
    assert size < 6 * 1024 * 1024


def test_shipped_preset_loads_with_expected_config():
    from keras_dmpo.models.vit_stages import load_vit_backbone

    backbone = load_vit_backbone("dmpo_vit_tiny")
    config = backbone.get_config()
    for key, value in EXPECTED_CONFIG.items():
        got = config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == value
    assert backbone.compute_dtype == "float32"
    tokens = np.asarray(backbone.predict(_fixed_images(), verbose=0))
    assert tokens.shape == (2, 50, 128)
    assert np.all(np.isfinite(tokens))
    np.testing.assert_allclose(tokens[:, 0, :8], np.asarray(REFERENCE_CLASS_TOKEN), atol=1e-3)
    assert backbone.count_params() == 1_072_896


def test_shipped_image_converter_passes_unit_range_images():
    import keras_hub

    converter = keras_hub.layers.ImageConverter.from_preset(PRESET_DIR)
    assert isinstance(converter, keras_hub.layers.ViTImageConverter)
    assert tuple(converter.image_size) == (28, 28)
    images = _fixed_images()
    np.testing.assert_allclose(np.asarray(converter(images)), images, atol=1e-6)


def test_unknown_preset_name_lists_known_ones():
    from keras_dmpo.models.vit_stages import load_vit_backbone

    with pytest.raises(ValueError, match="preset"):
        load_vit_backbone("dmpo_vit_huge")
