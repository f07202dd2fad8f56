"""`keras-dmpo export --quantization`: every mode the API has (the converter's
and the LiteRT quantizer's named recipes), a recipe file, and the calibration
images of int8 and the static recipes."""

import json
import os
import types

import numpy as np
import pytest
from PIL import Image

from keras_dmpo import cli
from keras_dmpo.litert.manifest import CONVERTER_QUANTIZATIONS, QUANTIZATION_MODES, QUANTIZER_RECIPES

IMAGE_SHAPE = (16, 16, 3)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of 10 small PNGs each."""
    root = tmp_path_factory.mktemp("calibration_images")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        os.makedirs(root / name)
        for i in range(10):
            pixels = rng.integers(0, 255, size=(20, 20, 3)).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return str(root)


class FakeEarlyExit:
    """Stands in for a loaded EarlyExitModel: records what export_tflite got."""

    model_sha256 = None

    def __init__(self):
        self.model = types.SimpleNamespace(image_shape=IMAGE_SHAPE)
        self.calls = []

    def export_tflite(self, directory, **options):
        self.calls.append(options)
        return {"stages": [{}, {}]}


@pytest.fixture
def fake_model(monkeypatch):
    fake = FakeEarlyExit()
    monkeypatch.setattr(cli, "_load_early_exit", lambda path: fake)
    return fake


def export(args, capsys):
    code = cli.main(["export", "--model", "m.keras", "--output-dir", "out", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_offers_every_mode_of_the_api():
    from keras_dmpo.export import tflite_convert

    # One list: the converter's modes and the recipes are the manifest schema's.
    assert tflite_convert.QUANTIZATIONS is CONVERTER_QUANTIZATIONS
    assert QUANTIZATION_MODES == CONVERTER_QUANTIZATIONS + QUANTIZER_RECIPES + ("custom",)
    assert cli.QUANTIZATION_CHOICES == ["float32", "dynamic", "float16", "int8", *QUANTIZER_RECIPES]
    # "custom" is --quantization-recipe FILE, not a name.
    assert [None if c == "float32" else c for c in cli.QUANTIZATION_CHOICES] == list(QUANTIZATION_MODES[:-1])


@pytest.mark.parametrize("flag, expected", [([], None), (["--quantization", "float32"], None)])
def test_float32_is_no_quantization(fake_model, capsys, flag, expected):
    code, out, _ = export(flag, capsys)
    assert code == 0 and "wrote 2 stage graphs" in out
    assert fake_model.calls == [
        {
            "quantization": expected,
            "representative_data": None,
            "overwrite": False,
            "class_names": None,
            "web": False,
        }
    ]


@pytest.mark.parametrize(
    "mode", ["dynamic", "float16", "weight_only_int8", "weight_only_int4", "dynamic_int8"]
)
def test_weight_quantizations_need_no_data(fake_model, capsys, mode):
    code, _, _ = export(["--quantization", mode], capsys)
    assert code == 0
    assert fake_model.calls[0]["quantization"] == mode
    assert fake_model.calls[0]["representative_data"] is None


@pytest.mark.parametrize("mode", ["int8", "static_int8", "static_int16", "mixed"])
def test_static_modes_without_representative_data_are_a_one_line_error(capsys, mode):
    # Refused before the (here missing) model is read.
    code, _, err = export(["--quantization", mode], capsys)
    assert code == 2
    assert err.startswith(f"keras-dmpo export: error: --quantization {mode} needs --representative-data")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", ["float16", "dynamic_int8"])
def test_representative_data_without_a_static_mode_is_refused(capsys, image_folder, mode):
    code, _, err = export(["--quantization", mode, "--representative-data", image_folder], capsys)
    assert code == 2 and "--representative-data is used by the modes with integer activations only" in err


def test_mixed_reads_the_folder_like_int8(fake_model, capsys, image_folder):
    code, out, _ = export(["--quantization", "mixed", "--representative-data", image_folder], capsys)
    assert code == 0 and "mixed calibration on 20 images" in out
    assert fake_model.calls[0]["quantization"] == "mixed"
    assert fake_model.calls[0]["representative_data"].shape == (20,) + IMAGE_SHAPE


def test_a_recipe_file_is_passed_as_the_recipe(fake_model, capsys, tmp_path):
    from keras_dmpo.export.quantizer import named_recipe

    recipe = named_recipe("dynamic_int8")[:1]
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    code, _, _ = export(["--quantization-recipe", str(path)], capsys)
    assert code == 0 and fake_model.calls[0]["quantization"] == recipe
    # A static recipe needs the images; both flags at once are refused; so is a bad file.
    static = named_recipe("static_int8")[:1]
    path.write_text(json.dumps(static))
    code, _, err = export(["--quantization-recipe", str(path)], capsys)
    assert code == 2 and f"--quantization-recipe {path} needs --representative-data" in err
    code, _, err = export(["--quantization-recipe", str(path), "--quantization", "int8"], capsys)
    assert code == 2 and "give --quantization or --quantization-recipe, not both" in err
    path.write_text("[{")
    code, _, err = export(["--quantization-recipe", str(path)], capsys)
    assert code == 2 and "is not valid JSON" in err
    path.write_text(json.dumps([{"regex": ".*", "operation": "FC", "algorithm_key": "no_quantize"}]))
    code, _, err = export(["--quantization-recipe", str(path)], capsys)
    assert code == 2 and "`quantization[0]['operation']` must be '*' or a LiteRT op name" in err


def test_int8_reads_a_random_subset_of_the_folder(fake_model, capsys, image_folder):
    code, out, _ = export(
        ["--quantization", "int8", "--representative-data", image_folder, "--representative-images", "8"],
        capsys,
    )
    assert code == 0 and "int8 calibration on 8 images" in out
    options = fake_model.calls[0]
    data = options["representative_data"]
    assert options["quantization"] == "int8"
    assert data.shape == (8,) + IMAGE_SHAPE and data.dtype == np.float32
    # Both classes are represented (the folder is read class by class).
    from keras_dmpo import image_folders

    paths, labels, _ = image_folders.list_class_folder(image_folder)
    all_images = image_folders.read_image_files(paths, IMAGE_SHAPE)
    rows = [int(np.flatnonzero((all_images == image).all(axis=(1, 2, 3)))[0]) for image in data]
    assert set(labels[rows]) == {0, 1}


def test_representative_images_takes_all_when_fewer(image_folder):
    images = cli.representative_images(image_folder, IMAGE_SHAPE, 500)
    assert images.shape == (20,) + IMAGE_SHAPE
    with pytest.raises(ValueError, match="at least 1"):
        cli.representative_images(image_folder, IMAGE_SHAPE, 0)


def test_too_few_images_of_the_users_folder_is_a_one_line_error(
    capsys, image_folder, tiny_vit_preset, tmp_path
):
    """The calibration images are the user's (--representative-data), never
    random ones; 20 of them are too few for a quantizer recipe, and the real
    model says so before converting anything."""
    from keras_dmpo import DMPOClassifier, EarlyExitModel

    model = DMPOClassifier.from_preset(tiny_vit_preset, num_classes=2, exits=[2, 4])
    path = str(tmp_path / "m.keras")
    EarlyExitModel(model).save(path)
    out_dir = str(tmp_path / "out")
    code = cli.main(
        [
            "export", "--model", path, "--output-dir", out_dir,
            "--quantization", "int8_matmuls", "--representative-data", image_folder,
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "`representative_data` has 20 images; `quantization='int8_matmuls'` needs at least 32" in err
    assert len(err.strip().splitlines()) == 1 and not os.path.exists(os.path.join(out_dir, "manifest.json"))
