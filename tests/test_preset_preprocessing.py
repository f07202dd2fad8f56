"""``DMPOClassifier.from_preset`` takes the input normalisation from the
preset's own keras-hub image converter.

The presets are conftest's tiny random ViT (``save_to_preset``) copied next
to a ``ViTImageConverter`` (also ``save_to_preset``), so keras-hub's own loading
code reads them offline. The references are numpy: the converter on pixels
in [0, 255], ``p * scale + offset``, with ``p = 255 * x``.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from keras_dmpo import DMPOClassifier, preset_registry
from keras_dmpo.models.options import load_preset_backbone
from keras_dmpo.models.preset_preprocessing import (
    converter_input_normalization,
    is_short_name_preset,
    preset_input_normalization,
)

NUM_CLASSES = 3
EXITS = [2, 4]
MEAN = np.array([0.3, 0.45, 0.6])
STD = np.array([0.2, 0.25, 0.4])

# name -> (converter kwargs, (scale, offset) the converter applies to [0, 255]
# pixels, computed here independently of the code under test)
CONVERTERS = {
    "scalar": (dict(scale=2 / 255, offset=-1.0), (np.full(3, 2 / 255), np.full(3, -1.0))),
    "per_channel": (
        dict(scale=list(1 / (255 * STD)), offset=list(-MEAN / STD)),
        (1 / (255 * STD), -MEAN / STD),
    ),
}


def _images():
    return np.random.default_rng(1).uniform(0, 1, size=(4, 32, 32, 3)).astype("float32")


def _save_preset(path, backbone_dir, converter_kwargs=None, converter_json=None):
    import keras_hub

    shutil.copytree(backbone_dir, path)
    if converter_kwargs is not None:
        keras_hub.layers.ViTImageConverter(image_size=(32, 32), **converter_kwargs).save_to_preset(path)
    if converter_json is not None:
        # Rewrite the saved config (e.g. keras-hub's older mean/variance keys).
        file = os.path.join(path, "image_converter.json")
        with open(file) as f:
            config = json.load(f)
        config["config"].update(converter_json)
        with open(file, "w") as f:
            json.dump(config, f)
    return path


@pytest.fixture(scope="module")
def presets(tmp_path_factory, tiny_vit_preset):
    # conftest's tiny ViT (saved without a converter), copied next to each one.
    root = tmp_path_factory.mktemp("converter_presets")
    none = tiny_vit_preset
    paths = {"none": none}
    for name, (kwargs, _) in CONVERTERS.items():
        paths[name] = _save_preset(str(root / name), none, kwargs)
    # Older keras-hub configs: scale, then per-channel mean and variance, which
    # ImageConverter turns into scale / std and -mean / std for [0, 1] units.
    paths["mean_variance"] = _save_preset(
        str(root / "mean_variance"),
        none,
        dict(scale=1 / 255),
        converter_json={"mean": list(MEAN), "variance": list(STD**2), "offset": None},
    )
    paths["identity"] = _save_preset(str(root / "identity"), none, dict(scale=1 / 255))
    paths["negative"] = _save_preset(str(root / "negative"), none, dict(scale=-1 / 255))
    return paths


@pytest.fixture(scope="module")
def plain_model(presets):
    """The tiny ViT and its heads without normalisation (same seed as ``_build``)."""
    return _build(presets["none"], input_normalization=None)


def _build(preset, **kwargs):
    keras.utils.set_random_seed(7)
    return DMPOClassifier.from_preset(preset, num_classes=NUM_CLASSES, exits=EXITS, **kwargs)


def _predict(model, images):
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(images, training=False).items()}


def _assert_same_outputs(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0)


def test_converter_to_normalization_reference():
    class Converter:
        def __init__(self, scale, offset):
            self.scale, self.offset = scale, offset

    assert converter_input_normalization(Converter(2 / 255, -1.0), 3) == pytest.approx(
        {"mean": 0.5, "std": 0.5}
    )
    assert converter_input_normalization(Converter(1 / 255, None), 3) is None
    assert converter_input_normalization(Converter(None, -1.0), 3) == pytest.approx(
        {"mean": 1 / 255, "std": 1 / 255}
    )
    got = converter_input_normalization(Converter(list(1 / (255 * STD)), list(-MEAN / STD)), 3)
    np.testing.assert_allclose(got["mean"], MEAN, rtol=1e-12)
    np.testing.assert_allclose(got["std"], STD, rtol=1e-12)
    for bad in (Converter(0.0, None), Converter([1.0, 2.0], None), Converter(1.0, float("nan"))):
        with pytest.raises(ValueError, match="image converter"):
            converter_input_normalization(bad, 3)


@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_stage_1_applies_the_converter(presets, plain_model, name):
    scale, offset = CONVERTERS[name][1]
    model = _build(presets[name])
    expected_std = 1 / (255 * scale)
    np.testing.assert_allclose(model.input_normalization["std"], expected_std, rtol=1e-9)
    np.testing.assert_allclose(
        model.input_normalization["mean"], -offset * expected_std, rtol=1e-9, atol=1e-12
    )
    plan_scale, plan_offset = model.stage_plan.normalization
    np.testing.assert_allclose(plan_scale, 255 * scale, rtol=1e-6)
    np.testing.assert_allclose(plan_offset, offset, rtol=1e-6, atol=1e-7)

    images = _images()
    got = _predict(model, images)
    # The same backbone and heads without normalisation, fed the converter's
    # output computed in numpy.
    converted = (255.0 * images.astype("float64") * scale + offset).astype("float32")
    _assert_same_outputs(got, _predict(plain_model, converted), atol=1e-4)
    # And an explicit, equivalent input_normalization.
    explicit = {"mean": list(-offset * expected_std), "std": list(expected_std)}
    _assert_same_outputs(
        got, _predict(_build(presets["none"], input_normalization=explicit), images), atol=1e-5
    )


def test_mean_variance_converter(presets):
    model = _build(presets["mean_variance"])
    np.testing.assert_allclose(model.input_normalization["mean"], MEAN, rtol=1e-6)
    np.testing.assert_allclose(model.input_normalization["std"], STD, rtol=1e-6)


def test_preset_without_converter_keeps_the_default(presets, plain_model):
    assert not os.path.exists(os.path.join(presets["none"], "image_converter.json"))
    model = _build(presets["none"])
    assert model.input_normalization is None
    assert model.stage_plan.normalization is None
    _assert_same_outputs(_predict(model, _images()), _predict(plain_model, _images()), atol=0)


def test_identity_converter_means_no_normalization(presets):
    model = _build(presets["identity"])
    assert model.input_normalization is None
    assert model.stage_plan.normalization is None


def test_explicit_input_normalization_wins(presets):
    assert _build(presets["scalar"], input_normalization=None).input_normalization is None
    model = _build(presets["scalar"], input_normalization="imagenet")
    assert model.input_normalization == "imagenet"


def test_unusable_converter_warns_and_falls_back(presets):
    with pytest.warns(UserWarning, match="Ignoring the image converter"):
        model = _build(presets["negative"])
    assert model.input_normalization is None


def test_short_names_keep_their_own_options():
    folder = preset_registry.preset_path("dmpo_vit_tiny")
    # Its converter (scale 1.0) passes [0, 1] images through; the short name
    # and its folder are not read as a [0, 255] converter.
    assert os.path.isfile(os.path.join(folder, "image_converter.json"))
    assert is_short_name_preset("dmpo_vit_tiny") and is_short_name_preset(folder)
    assert preset_input_normalization("dmpo_vit_tiny", 3) == (False, None)
    assert "input_normalization" not in load_preset_backbone(folder)[1]
