"""write_web_samples: the sample images a web bundle's page shows."""

import json
import os
import shutil

import numpy as np
import pytest
from export_checks import float_export

from keras_dmpo.export.web_samples import write_web_samples


@pytest.fixture
def bundle(tmp_path_factory, tmp_path):
    directory, reference = float_export(tmp_path_factory, web=True)
    copy = tmp_path / "bundle"
    shutil.copytree(directory, copy)
    return str(copy), reference


def test_samples_round_trip_as_pngs_with_their_labels(bundle):
    from PIL import Image

    directory, reference = bundle
    images = reference["images"][:6]  # uint8-like pixels, input_range [0, 255]
    index = write_web_samples(directory, images, labels=np.arange(6) % 5)
    assert [e["file"] for e in index["images"]] == [f"{i:04d}.png" for i in range(6)]
    assert [e["label_name"] for e in index["images"]][:2] == ["class_0", "class_1"]
    with open(os.path.join(directory, "samples", "index.json")) as handle:
        assert json.load(handle) == index
    for i, entry in enumerate(index["images"]):
        pixels = np.asarray(Image.open(os.path.join(directory, "samples", entry["file"])))
        np.testing.assert_array_equal(pixels, images[i])
    # No temporary directory is left beside the samples.
    assert not [n for n in os.listdir(directory) if n.startswith(".samples")]


def test_existing_samples_are_kept_unless_overwrite(bundle):
    directory, reference = bundle
    write_web_samples(directory, reference["images"][:2])
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        write_web_samples(directory, reference["images"][:3])
    assert len(os.listdir(os.path.join(directory, "samples"))) == 3  # 2 PNGs + index
    write_web_samples(directory, reference["images"][:3], overwrite=True)
    assert len(os.listdir(os.path.join(directory, "samples"))) == 4
    assert not [n for n in os.listdir(directory) if n.startswith(".samples")]


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (
            np.zeros((2, 8, 8, 3)),
            None,
            r"`images` must be an array of shape \(N, 32, 32, 3\).*got shape \(2, 8, 8, 3\)",
        ),
        (np.full((1, 32, 32, 3), np.nan), None, "finite numbers"),
        (np.zeros((2, 32, 32, 3)), [0, 5], r"`labels` must be None or 2 integers in \[0, 5\)"),
        (np.zeros((2, 32, 32, 3)), [0.5, 1], r"`labels` must be None or 2 integers"),
    ],
)
def test_bad_arguments_are_named(bundle, images, labels, message):
    directory, _ = bundle
    with pytest.raises(ValueError, match=message):
        write_web_samples(directory, images, labels=labels)
    assert not os.path.exists(os.path.join(directory, "samples"))
