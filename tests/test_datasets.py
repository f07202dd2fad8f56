"""keras_dmpo.datasets: digits, generated arrays and fake Fashion-MNIST files.

Nothing here needs the real Fashion-MNIST except the one opt-in test
(``--run-fashion-mnist``).
"""

import gzip
import os

import numpy as np
import pytest

from keras_dmpo import datasets


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits(image_size=16, channels=3, seed=0)


def test_load_digits_structure(digits):
    assert digits["class_names"] == [str(i) for i in range(10)]
    sizes = {}
    for split in ("train", "validation", "test"):
        x, y = digits[split]
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape[1:] == (16, 16, 3)
        assert x.shape[0] == y.shape[0]
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_array_equal(x[..., 0], x[..., 2])
        sizes[split] = len(y)
    assert sizes == {"train": 1797 - 720, "validation": 360, "test": 360}
    # Stratified: every class in every split, in near-equal numbers.
    for split in ("validation", "test"):
        counts = np.bincount(digits[split][1], minlength=10)
        assert counts.min() >= 35 and counts.max() <= 37


def test_load_digits_is_deterministic_and_disjoint(digits):
    again = datasets.load_digits(image_size=16, channels=3, seed=0)
    np.testing.assert_array_equal(digits["test"][0], again["test"][0])
    other = datasets.load_digits(image_size=16, channels=3, seed=1)
    assert not np.array_equal(digits["test"][1], other["test"][1])
    # No image appears in two splits (digits has a few exact duplicates).
    flat = {s: digits[s][0][..., 0].reshape(len(digits[s][0]), -1) for s in ("train", "validation", "test")}
    train_rows = {row.tobytes() for row in flat["train"]}
    overlap = sum(row.tobytes() in train_rows for row in flat["test"])
    assert overlap <= 3


def test_load_digits_options():
    data = datasets.load_digits(
        image_size=8, channels=1, validation_size=100, test_size=200, train_size=50, classes=[3, "7"]
    )
    assert data["class_names"] == ["3", "7"]
    assert data["train"][0].shape == (50, 8, 8, 1)
    assert len(data["validation"][1]) == 100 and len(data["test"][1]) == 200
    assert set(np.unique(data["test"][1])) == {0, 1}
    # 8x8 keeps the original pixels, scaled from 0..16 to [0, 1].
    from sklearn.datasets import load_digits as sk_load

    sk = sk_load()
    originals = {(img / 16.0).astype("float32").tobytes() for img in sk.images[np.isin(sk.target, [3, 7])]}
    assert all(img[..., 0].tobytes() in originals for img in data["test"][0])


def test_resize_images():
    x = np.random.default_rng(0).uniform(size=(4, 8, 8)).astype("float32")
    up = datasets.resize_images(x, 28)
    assert up.shape == (4, 28, 28) and up.dtype == np.float32
    assert up.min() >= x.min() - 1e-6 and up.max() <= x.max() + 1e-6
    constant = datasets.resize_images(np.full((1, 28, 28, 3), 0.5), 10)
    np.testing.assert_allclose(constant, 0.5, atol=1e-6)
    # Shrinking is antialiased: a checkerboard averages to grey.
    board = (np.indices((28, 28)).sum(0) % 2).astype("float32")[None]
    np.testing.assert_allclose(datasets.resize_images(board, 14), 0.5, atol=0.26)
    assert datasets.resize_images(x, 8) is not None


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(image_size=4), "image_size"),
        (dict(channels=2), "channels"),
        (dict(validation_size=1800), "validation_size"),
        (dict(validation_size=-1), "validation_size"),
        (dict(test_size=1797), "test_size"),
        (dict(test_size=5), "test_size"),
        (dict(train_size=5000), "train_size"),
        (dict(classes=[11]), "classes"),
        (dict(classes=["cat"]), "classes"),
        (dict(classes=[1, 1]), "classes"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        datasets.load_digits(**kwargs)


def test_load_dataset_by_name():
    data = datasets.load_dataset("digits", image_size=8, channels=1)
    assert data["train"][0].shape[1:] == (8, 8, 1)
    with pytest.raises(ValueError, match="fashion_mnist.*digits|digits.*fashion"):
        datasets.load_dataset("imagenet")


def _write_idx(directory, train=6, test=4, corrupt=None):
    """Tiny valid idx/gz files named like Fashion-MNIST's."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    content = {}
    for prefix, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n).astype("uint8")
        images = rng.integers(0, 256, (n, 28, 28)).astype("uint8")
        content[f"{prefix}-labels-idx1-ubyte.gz"] = b"\0" * 8 + labels.tobytes()
        content[f"{prefix}-images-idx3-ubyte.gz"] = b"\0" * 16 + images.tobytes()
    for name, payload in content.items():
        data = gzip.compress(payload)
        if name == corrupt:
            data = data[: len(data) // 2]
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def test_seed_cache_copies_debian_files(tmp_path, monkeypatch):
    source = tmp_path / "debian"
    _write_idx(str(source))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", str(source))
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    assert datasets.fashion_mnist_cache_dir() == str(home / "datasets" / "fashion-mnist")
    copied = datasets.seed_fashion_mnist_cache()
    assert len(copied) == 4
    for name in datasets.FASHION_MNIST_FILES:
        target = home / "datasets" / "fashion-mnist" / name
        assert target.read_bytes() == (source / name).read_bytes()
    # A complete cache is left alone.
    assert datasets.seed_fashion_mnist_cache() == []
    # Missing source files: nothing copied, no error.
    empty_home = tmp_path / "other_home"
    assert (
        datasets.seed_fashion_mnist_cache(cache_dir=str(empty_home), source_dir=str(tmp_path / "nowhere"))
        == []
    )
    assert not (empty_home / "datasets").exists()


def _point_keras_at(monkeypatch, cache_dir):
    """Make keras' Fashion-MNIST loader read ``cache_dir`` (no network)."""
    import keras
    from keras.src.datasets import fashion_mnist

    real_get_file = fashion_mnist.get_file

    def get_file(fname, origin=None, cache_subdir="datasets", **kwargs):
        path = os.path.join(cache_dir, cache_subdir, fname)
        if not os.path.exists(path):
            raise Exception(f"URL fetch failure on {origin}: no network")
        return path

    monkeypatch.setattr(fashion_mnist, "get_file", get_file)
    assert keras.datasets.fashion_mnist.load_data is fashion_mnist.load_data
    return real_get_file


def test_fake_files_go_through_keras_loader(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _write_idx(str(home / "datasets" / "fashion-mnist"))
    monkeypatch.setenv("KERAS_HOME", str(home))
    _point_keras_at(monkeypatch, str(home))
    # The fake files hold 6 + 4 images, not 60,000 + 10,000.
    with pytest.raises(ValueError, match="unexpected sizes"):
        datasets.load_fashion_mnist()


def test_corrupt_file_gives_clear_error(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _write_idx(str(home / "datasets" / "fashion-mnist"), corrupt="train-images-idx3-ubyte.gz")
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "x"))
    _point_keras_at(monkeypatch, str(home))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        datasets.load_fashion_mnist()


def test_no_data_no_network_says_both_ways(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "x"))
    _point_keras_at(monkeypatch, str(home))
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist()
    with pytest.raises(ValueError, match="`channels`"):
        datasets.load_fashion_mnist(channels=4)


@pytest.mark.fashion_mnist
def test_real_fashion_mnist():
    data = datasets.load_fashion_mnist(validation_size=5000, test_size=1000, classes=[1, 3, 4, 6, 9])
    assert data["class_names"] == ["Trouser", "Dress", "Coat", "Shirt", "Ankle boot"]
    assert data["train"][0].shape == (25000, 28, 28, 3)
    assert len(data["validation"][1]) == 5000
    assert np.bincount(data["test"][1]).tolist() == [200] * 5
