"""Photo sets: archives unpacked once into the cache, CIFAR-10 and folders
with train/validation/test splits.

Synthetic folders (PNG files whose pixels encode their class and index) check
the splitting exactly; the real photo sets in ``../shared/data`` (or
``$KERAS_DMPO_DATA_ROOT``) are read where they exist, else those tests skip.
"""

import os
import tarfile
import zipfile

import numpy as np
import pytest

from keras_dmpo import archives, datasets, image_folders

# Files, Pillow and numpy only: the same under every Keras backend.
pytestmark = pytest.mark.backend_independent

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_ROOT = os.environ.get("KERAS_DMPO_DATA_ROOT", os.path.join(os.path.dirname(REPO), "shared", "data"))


def _write_image(path, value, size=(12, 10)):
    from PIL import Image

    pixels = np.zeros((size[1], size[0], 3), dtype="uint8")
    pixels[..., 0] = value % 256
    pixels[..., 1] = value // 256
    pixels[..., 2] = 7
    Image.fromarray(pixels).save(path)


def make_photo_folder(root, counts, splits=("train", "validation", "test"), class_names=("a", "b", "c")):
    """``counts[split][class]`` PNGs per class; image ``k`` (a running
    number over all files) has red = k % 256 and green = k // 256."""
    k = 0
    for split in splits:
        for c, name in enumerate(class_names):
            folder = os.path.join(root, split, name)
            os.makedirs(folder)
            for i in range(counts[split][c]):
                _write_image(os.path.join(folder, f"{i:04d}.png"), k)
                k += 1
    return k


def image_ids(x):
    """The running number of each image (red + 256 * green), exact for PNG."""
    return np.rint(x[:, 0, 0, 0] * 255).astype(int) + 256 * np.rint(x[:, 0, 0, 1] * 255).astype(int)


@pytest.fixture
def photo_folder(tmp_path):
    root = tmp_path / "photos"
    counts = {"train": [20, 12, 8], "validation": [4, 3, 2], "test": [6, 5, 4]}
    total = make_photo_folder(str(root), counts)
    return str(root), counts, total


def _tar(folder, path, mode="w:gz"):
    with tarfile.open(path, mode) as archive:
        archive.add(folder, arcname="photos")
    return path


# --- archives -----------------------------------------------------------------
def test_unpack_archive_once_and_checked(photo_folder, tmp_path, monkeypatch):
    folder, _, _ = photo_folder
    path = _tar(folder, str(tmp_path / "photos.tar.gz"))
    cache = str(tmp_path / "cache")
    target = archives.unpack_archive(path, cache_dir=cache)
    assert os.path.isfile(os.path.join(target, archives.MARKER))
    assert os.path.basename(target).startswith("photos-")
    assert sorted(os.listdir(os.path.join(target, "photos"))) == ["test", "train", "validation"]
    # Leftovers: nothing but the folder itself.
    assert os.listdir(cache) == [os.path.basename(target)]

    # Second call: no unpacking at all.
    def refuse(*args):
        raise AssertionError("unpacked twice")

    monkeypatch.setattr(archives, "_extract", refuse)
    assert archives.unpack_archive(path, cache_dir=cache) == target
    # dataset_root descends through the lone top folder.
    assert archives.dataset_root(path, cache_dir=cache) == os.path.join(target, "photos")

    with pytest.raises(ValueError, match=r"`source`=.*photos.tar.gz.*sha256 .* expected 0{64}"):
        archives.unpack_archive(path, sha256="0" * 64, cache_dir=cache, argument="source")


def test_unpack_archive_interrupted_leaves_nothing(photo_folder, tmp_path, monkeypatch):
    folder, _, _ = photo_folder
    path = _tar(folder, str(tmp_path / "photos.tar"), mode="w")
    cache = str(tmp_path / "cache")
    real = archives._extract

    def half_then_fail(source, destination, argument):
        real(source, destination, argument)
        raise KeyboardInterrupt

    monkeypatch.setattr(archives, "_extract", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        archives.unpack_archive(path, cache_dir=cache)
    assert os.listdir(cache) == []
    monkeypatch.setattr(archives, "_extract", real)
    target = archives.unpack_archive(path, cache_dir=cache)
    assert os.path.isdir(os.path.join(target, "photos", "train", "a"))


def test_unpack_archive_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"`source`='.*missing.tar': no such file"):
        archives.unpack_archive(str(tmp_path / "missing.tar"), argument="source")
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match="not an archive"):
        archives.unpack_archive(str(text), cache_dir=str(tmp_path / "c"))
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 10)
    with pytest.raises(ValueError, match="cannot unpack"):
        archives.unpack_archive(str(broken), cache_dir=str(tmp_path / "c"))
    assert not [e for e in os.listdir(tmp_path / "c") if not e.endswith(".lock")]
    not_zip = tmp_path / "broken.zip"
    not_zip.write_bytes(b"PK nothing")
    with pytest.raises(ValueError, match=r"`source`=.*broken.zip.*cannot unpack it \(BadZipFile"):
        archives.unpack_archive(str(not_zip), cache_dir=str(tmp_path / "c"))
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("./", "")
        archive.writestr("photos/train/a/x.txt", "x")
    assert os.path.isfile(
        os.path.join(
            archives.unpack_archive(str(good), cache_dir=str(tmp_path / "c")), "photos/train/a/x.txt"
        )
    )
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../outside.txt", "x")
    with pytest.raises(ValueError, match="points outside"):
        archives.unpack_archive(str(evil), cache_dir=str(tmp_path / "c"))
    assert not (tmp_path / "outside.txt").exists()


def test_known_archive_sha256_is_enforced(tmp_path):
    fake = tmp_path / "clothing-small.tar"
    with tarfile.open(fake, "w"):
        pass
    with pytest.raises(ValueError, match="612dc13e5a94"):
        archives.unpack_archive(str(fake), cache_dir=str(tmp_path / "c"))


# --- load_image_splits ----------------------------------------------------------
def test_image_splits_own_splits(photo_folder):
    folder, counts, _ = photo_folder
    data = datasets.load_image_splits(folder, image_size=8)
    assert data["class_names"] == ["a", "b", "c"]
    assert "own splits" in data["source"] and folder in data["source"]
    for split in ("train", "validation", "test"):
        x, y = data[split]
        assert x.shape == (sum(counts[split]), 8, 8, 3) and x.dtype == np.float32
        assert y.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(y, minlength=3), counts[split])
    # Constant images stay exact through the resize: the ids survive.
    ids = {s: set(image_ids(data[s][0])) for s in ("train", "validation", "test")}
    assert ids["train"] == set(range(40))
    assert ids["validation"] == set(range(40, 49)) and ids["test"] == set(range(49, 64))


def test_image_splits_resplit_is_stratified_disjoint_and_seeded(photo_folder):
    folder, _, total = photo_folder
    data = datasets.load_image_splits(folder, 8, resplit=True, train_size=30, validation_size=12, seed=3)
    ids = {s: image_ids(data[s][0]) for s in ("train", "validation", "test")}
    assert [len(ids[s]) for s in ("train", "validation", "test")] == [30, 12, total - 42]
    every = np.concatenate(list(ids.values()))
    assert sorted(every) == list(range(total))  # each image once
    # Stratified: class shares within one image of the pool's.
    pool = np.asarray([30, 20, 14]) / total
    for split in ("train", "validation"):
        counts = np.bincount(data[split][1], minlength=3)
        assert np.all(np.abs(counts - pool * len(ids[split])) <= 1.0)
    again = datasets.load_image_splits(folder, 8, resplit=True, train_size=30, validation_size=12, seed=3)
    np.testing.assert_array_equal(image_ids(again["test"][0]), ids["test"])
    other = datasets.load_image_splits(folder, 8, resplit=True, train_size=30, validation_size=12, seed=4)
    assert set(image_ids(other["test"][0])) != set(ids["test"])
    sized = datasets.load_image_splits(folder, 8, resplit=True, validation_size=12, test_size=10, seed=3)
    assert len(sized["test"][1]) == 10 and len(sized["train"][1]) == total - 22


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(validation_size=12, test_size=52), r"`test_size`=52 does not fit: 52 images are left after"),
        (dict(validation_size=12, test_size=60), r"`test_size`=60 does not fit: 52 images"),
        (dict(validation_size=12, train_size=52), r"`train_size`=52 does not fit: 52 images"),
        (
            dict(validation_size=12, train_size=40, test_size=13),
            r"`train_size`=40 does not fit.*other split's 13",
        ),
        (dict(validation_size=64, train_size=1), r"`validation_size`=64 does not fit: the pool has 64"),
    ],
)
def test_image_splits_resplit_never_leaves_a_split_empty(photo_folder, kwargs, message):
    folder, _, total = photo_folder
    assert total == 64
    with pytest.raises(ValueError, match=message):
        datasets.load_image_splits(folder, 8, resplit=True, **kwargs)
    # The largest sizes that fit leave one image for the other split... per class where stratified.
    data = datasets.load_image_splits(
        folder, 8, resplit=True, validation_size=12, train_size=30, test_size=22
    )
    assert [len(data[s][1]) for s in ("train", "validation", "test")] == [30, 12, 22]


def test_image_splits_without_validation_folder_and_options(tmp_path):
    root = str(tmp_path / "p")
    make_photo_folder(root, {"train": [10, 10, 10], "test": [3, 3, 3]}, splits=("train", "test"))
    with pytest.raises(ValueError, match="no validation/ folder: give `validation_size`"):
        datasets.load_image_splits(root, 8)
    with pytest.raises(ValueError, match="`validation_size`=30 does not fit: train/ has 30 images"):
        datasets.load_image_splits(root, 8, validation_size=30)
    data = datasets.load_image_splits(
        root, 8, validation_size=6, train_size=12, classes=["c", "a"], channels=1
    )
    assert data["class_names"] == ["c", "a"]
    assert data["train"][0].shape == (12, 8, 8, 1) and len(data["validation"][1]) == 6
    np.testing.assert_array_equal(np.bincount(data["test"][1]), [3, 3])


def test_image_splits_bad_input(photo_folder, tmp_path):
    folder, _, _ = photo_folder
    with pytest.raises(ValueError, match="`source`=.*no such file or folder"):
        datasets.load_image_splits(str(tmp_path / "nope"), 8)
    with pytest.raises(ValueError, match="`validation_size` is required"):
        datasets.load_image_splits(folder, 8, resplit=True, train_size=10)
    with pytest.raises(ValueError, match="`resplit` must be True or False"):
        datasets.load_image_splits(folder, 8, resplit="yes")
    with pytest.raises(ValueError, match="`train_size`=500 does not fit"):
        datasets.load_image_splits(folder, 8, resplit=True, train_size=500, validation_size=5)
    only_train = str(tmp_path / "only")
    make_photo_folder(only_train, {"train": [2, 2, 2]}, splits=("train",))
    with pytest.raises(ValueError, match="expected the folders train/ and test/"):
        datasets.load_image_splits(only_train, 8)
    odd = str(tmp_path / "odd")
    make_photo_folder(odd, {"train": [2, 2, 2], "test": [2, 2]}, splits=("train",))
    make_photo_folder(odd + "_t", {"test": [2, 2]}, splits=("test",), class_names=("a", "z"))
    os.rename(os.path.join(odd + "_t", "test"), os.path.join(odd, "test"))
    with pytest.raises(ValueError, match=r"has the classes \['a', 'z'\], expected \['a', 'b', 'c'\]"):
        datasets.load_image_splits(odd, 8)
    bad = os.path.join(folder, "test", "a", "0000.png")
    with open(bad, "wb") as handle:
        handle.write(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*0000.png"):
        datasets.load_image_splits(folder, 8)


def test_read_image_files_matches_pillow(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    path = str(tmp_path / "x.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype="uint8")).save(path)
    out = image_folders.read_image_files([path], (16, 16, 3))
    with Image.open(path) as image:
        reference = np.asarray(image.resize((16, 16), Image.BILINEAR), dtype="float32") / 255.0
    np.testing.assert_allclose(out[0], reference, atol=1e-7)
    grey = image_folders.read_image_files([path], (16, 16, 1))
    with Image.open(path) as image:
        reference = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), "float32") / 255.0
    np.testing.assert_allclose(grey[0, ..., 0], reference, atol=1e-7)


# --- load_cifar10 -----------------------------------------------------------------
def test_cifar10_from_keras_arrays(monkeypatch):
    import keras

    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (200, 32, 32, 3), dtype="uint8")
    y_train = np.repeat(np.arange(10), 20).reshape(-1, 1)
    x_test = rng.integers(0, 256, (50, 32, 32, 3), dtype="uint8")
    y_test = np.repeat(np.arange(10), 5).reshape(-1, 1)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: ((x_train, y_train), (x_test, y_test)))
    data = datasets.load_cifar10(validation_size=40, train_size=100, seed=1)
    assert data["source"] == datasets.CIFAR10_KERAS_SOURCE
    assert data["class_names"][0] == "airplane" and len(data["class_names"]) == 10
    assert [len(data[s][1]) for s in ("train", "validation", "test")] == [100, 40, 50]
    # 32 px keeps the original pixels: every test image is x_test / 255, in order.
    np.testing.assert_array_equal(data["test"][0], x_test.astype("float32") / 255.0)
    np.testing.assert_array_equal(np.bincount(data["train"][1]), [10] * 10)
    grey = datasets.load_cifar10(validation_size=10, channels=1, classes=["cat", "dog"])
    assert grey["class_names"] == ["cat", "dog"] and grey["test"][0].shape == (10, 32, 32, 1)
    expected = (x_test[y_test[:, 0] == 3].astype("float32") / 255.0) @ np.asarray([0.299, 0.587, 0.114])
    np.testing.assert_allclose(grey["test"][0][:5, ..., 0], expected.astype("float32"), atol=1e-6)


def test_cifar10_download_failure_says_what_to_do(monkeypatch):
    import keras

    def offline():
        raise OSError("no network")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(ValueError, match="pass `source=` a CIFAR-10 JPEG copy"):
        datasets.load_cifar10()


def test_cifar10_from_an_image_folder(tmp_path):
    root = str(tmp_path / "cifar")
    names = datasets.CIFAR10_CLASS_NAMES
    make_photo_folder(
        root, {"train": [6] * 10, "test": [2] * 10}, splits=("train", "test"), class_names=names
    )
    data = datasets.load_cifar10(8, validation_size=20, train_size=30, source=root)
    assert data["source"] == f"image files at {root}"
    assert [len(data[s][1]) for s in ("train", "validation", "test")] == [30, 20, 20]
    ids = {s: set(image_ids(data[s][0])) for s in ("train", "validation", "test")}
    assert not ids["train"] & ids["validation"] and ids["test"] == set(range(60, 80))
    with pytest.raises(ValueError, match=r"has the classes \['a'\], expected"):
        bad = str(tmp_path / "bad")
        make_photo_folder(bad, {"train": [1], "test": [1]}, splits=("train", "test"), class_names=("a",))
        datasets.load_cifar10(source=bad)


# --- the real photo sets (../shared/data) ---------------------------------------
def _shared(name):
    path = os.path.join(DATA_ROOT, name)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not here (the project's machines and CI have ../shared/data)")
    return path


@pytest.fixture(scope="module")
def photo_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("photo_cache"))


def test_shared_cifar10_jpeg(photo_cache):
    from PIL import Image

    archive = _shared("cifar10-jpeg.tar.gz")
    data = datasets.load_cifar10(
        32, validation_size=100, train_size=200, test_size=300, source=archive, cache_dir=photo_cache
    )
    assert data["class_names"] == datasets.CIFAR10_CLASS_NAMES
    assert [len(data[s][1]) for s in ("train", "validation", "test")] == [200, 100, 300]
    for split, per_class in (("train", 20), ("validation", 10), ("test", 30)):
        np.testing.assert_array_equal(np.bincount(data[split][1]), [per_class] * 10)
    root = archives.dataset_root(archive, cache_dir=photo_cache)
    assert data["source"] == f"image files at {root}"
    assert sum(len(files) for _, _, files in os.walk(os.path.join(root, "test"))) == 10000
    # Independent decode of the first test file of class 0 with Pillow.
    first = sorted(os.listdir(os.path.join(root, "test", "airplane")))
    paths, _, _ = image_folders.list_class_folder(os.path.join(root, "test"))
    with Image.open(os.path.join(root, "test", "airplane", first[0])) as image:
        reference = np.asarray(image.convert("RGB"), "float32") / 255.0
    assert paths[0].endswith(first[0])
    decoded = image_folders.read_image_files(paths[:1], (32, 32, 3))
    np.testing.assert_array_equal(decoded[0], reference)
    assert 0.2 < data["test"][0].mean() < 0.7  # photographs, not blank files


def test_shared_clothing_resplit(photo_cache):
    archive = _shared("clothing-small.tar")
    data = datasets.load_image_splits(
        archive, 16, resplit=True, train_size=1500, validation_size=500, seed=0, cache_dir=photo_cache
    )
    names = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]
    assert data["class_names"] == names
    sizes = [len(data[s][1]) for s in ("train", "validation", "test")]
    assert sizes == [1500, 500, 1781]
    pool = sum(np.bincount(data[s][1], minlength=10) for s in ("train", "validation", "test"))
    assert pool.sum() == 3781 and pool[names.index("t-shirt")] == 928 and pool[names.index("skirt")] == 136
    for split, size in zip(("train", "validation", "test"), sizes):
        share = np.bincount(data[split][1], minlength=10) / size
        np.testing.assert_allclose(share, pool / 3781, atol=1.5 / size + 1e-9)
    assert "pooled and split again" in data["source"]
