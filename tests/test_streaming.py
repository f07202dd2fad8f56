"""Streaming inputs: image files and datasets read one batch at a time, on
every backend, giving the same results as the same images held as arrays."""

import os

import keras
import numpy as np
import pytest

from keras_dmpo import DMPOClassifier, EarlyExitModel
from keras_dmpo.image_batches import ImageBatches, augmentation, folder_batches
from keras_dmpo.image_folders import read_image_files, split_indices

PIL = pytest.importorskip("PIL.Image")
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """A class-per-folder directory of 18 small PNG/JPEG files of odd sizes."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in range(NUM_CLASSES):
        os.makedirs(root / f"class_{c}")
        for i in range(6):
            size = (int(rng.integers(20, 50)), int(rng.integers(20, 50)))
            pixels = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
            ext = "png" if i % 2 else "jpg"
            PIL.fromarray(pixels).save(root / f"class_{c}" / f"{i}.{ext}")
    return str(root)


@pytest.fixture(scope="module")
def model(tiny_vit_preset):
    keras.utils.set_random_seed(1)
    # Linear heads, no bypass: at this tiny width a covariance head costs more
    # than a block, so budgets below 100% need the cheap configuration.
    return DMPOClassifier.from_preset(
        tiny_vit_preset, num_classes=NUM_CLASSES, exits=[1, 2, 3], covariance_exits="none", use_bypass=False
    )


def test_file_batches_equal_the_pillow_reference(photo_folder):
    batches, names = folder_batches(photo_folder, (32, 32, 3), batch_size=5)
    assert names == ["class_0", "class_1", "class_2"] and len(batches) == 4
    reference = read_image_files(batches.images, (32, 32, 3))
    images = np.concatenate([batches[i][0] for i in range(len(batches))])
    labels = np.concatenate([batches[i][1] for i in range(len(batches))])
    np.testing.assert_array_equal(images, reference)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(NUM_CLASSES), 6))


def test_shuffle_depends_only_on_seed_and_epoch():
    x = np.arange(20, dtype="float32").reshape(20, 1, 1, 1) * np.ones((1, 2, 2, 3), "float32")
    y = np.arange(20)
    first = ImageBatches(x, y, batch_size=7, shuffle=True, seed=3)
    again = ImageBatches(x, y, batch_size=7, shuffle=True, seed=3)
    first.set_epoch(2)
    again.set_epoch(2)
    order = np.concatenate([first[i][1] for i in range(len(first))])
    np.testing.assert_array_equal(order, np.concatenate([again[i][1] for i in range(len(again))]))
    assert sorted(order.tolist()) == list(range(20)) and order.tolist() != list(range(20))
    # Images follow their labels through the shuffle.
    np.testing.assert_array_equal(first[0][0][:, 0, 0, 0], first[0][1])
    again.set_epoch(3)
    assert np.concatenate([again[i][1] for i in range(len(again))]).tolist() != order.tolist()


def test_corrupt_file_is_named_or_skipped(photo_folder, tmp_path):
    bad = tmp_path / "photos"
    import shutil

    shutil.copytree(photo_folder, bad)
    (bad / "class_1" / "broken.jpg").write_bytes(b"not an image")
    batches, _ = folder_batches(str(bad), (32, 32, 3), batch_size=4)
    index = int(np.flatnonzero([p.endswith("broken.jpg") for p in batches.images])[0]) // 4
    with pytest.raises(ValueError, match=rf"broken\.jpg.*batch {index}"):
        batches[index]
    skipping, _ = folder_batches(str(bad), (32, 32, 3), batch_size=4, skip_bad_images=True)
    total = sum(len(skipping[i][0]) for i in range(len(skipping)))
    assert total == 18 and [os.path.basename(p) for p in skipping.bad_files] == ["broken.jpg"]


def test_stratified_split_is_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), 25)
    parts = split_indices(labels, seed=0, fractions=(0.7, 0.15, 0.15))
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert [len(p) for p in parts] == [68, 16, 16]
    assert all(np.array_equal(a, b) for a, b in zip(parts, split_indices(labels, 0, (0.7, 0.15, 0.15))))
    assert not np.array_equal(parts[1], split_indices(labels, 1, (0.7, 0.15, 0.15))[1])


@pytest.mark.parametrize("kind", ["pydataset", "tf_data"])
def test_early_exit_on_a_stream_equals_arrays(model, kind):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(30, 32, 32, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, 30)
    if kind == "pydataset":
        stream = ImageBatches(x, y, batch_size=8)
    else:
        tf = pytest.importorskip("tensorflow")
        stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    ee = EarlyExitModel(model)
    np.testing.assert_allclose(ee.exit_probabilities(stream), ee.exit_probabilities(x), atol=1e-5)
    from_arrays = ee.calibrate(x, y, flops_budget=0.6)
    from_stream = EarlyExitModel(model).calibrate(stream, flops_budget=0.6)
    np.testing.assert_allclose(from_stream.thresholds, from_arrays.thresholds, atol=1e-5)
    arrays_out, stream_out = ee.predict(x, batch_size=8), ee.predict(stream, batch_size=8)
    np.testing.assert_array_equal(stream_out["exit_index"], arrays_out["exit_index"])
    np.testing.assert_allclose(stream_out["probabilities"], arrays_out["probabilities"], atol=1e-5)
    parts = list(ee.iter_predict(stream, batch_size=8))
    assert [len(p["labels"]) for p in parts] == [8, 8, 8, 6]
    np.testing.assert_array_equal(np.concatenate([p["y"] for p in parts]), y)


def test_non_finite_batch_mid_stream_is_named(model):
    x = np.random.default_rng(0).uniform(size=(24, 32, 32, 3)).astype("float32")
    x[19, 3, 3, 0] = np.nan  # batch 2 (of 8), sample 3
    y = np.arange(24) % NUM_CLASSES

    class Stream(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8]

    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"batch 2 has NaN or inf.*sample 3"):
        model.fit(Stream(), epochs=1, verbose=0, callbacks=[])
    with pytest.raises(ValueError, match=r"batch 2\).*indices \[3\]"):
        EarlyExitModel(model).predict(Stream())
    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(ValueError, match=r"batch 2\).*indices \[3\]"):
        EarlyExitModel(model).calibrate(dataset, flops_budget=0.6)


def test_fit_checks_every_batch_of_a_tf_data_pipeline(model):
    # A model of its own: on JAX, Keras detaches the variables' values during
    # fit, and a data error in a fit's first step can leave them detached.
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(0).uniform(size=(24, 32, 32, 3)).astype("float32")
    x[19, 3, 3, 0] = np.nan  # batch 2 (of 8), sample 3
    y = np.arange(24) % NUM_CLASSES
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model.compile(optimizer="sgd")
    # The first batch is clean: only a check of every batch finds this one.
    with pytest.raises(
        ValueError, match=r"^`x` batch 2 has NaN or inf pixel values in 1 of 8 samples \(first: sample 3"
    ):
        model.fit(dataset, epochs=1, verbose=0, callbacks=[])
    with pytest.raises(ValueError, match=r"^`x` batch 2 has NaN"):
        model.evaluate(dataset, verbose=0)
    clean = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8)
    with pytest.raises(ValueError, match=r"^`validation_data` batch 2 has NaN .* sample 3 of the batch\)"):
        model.fit(clean, validation_data=dataset, epochs=1, verbose=0, callbacks=[])
    # The check keeps the pipeline's element structure and length.
    history = model.fit(clean, validation_data=clean, epochs=1, verbose=0, callbacks=[])
    assert np.isfinite(history.history["loss"][0]) and "val_loss" in history.history


def test_augmentation_changes_training_batches_only():
    x = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype("float32")
    plain = ImageBatches(x, np.zeros(8), batch_size=8)
    augmented = ImageBatches(x, np.zeros(8), batch_size=8, augment=True, seed=0)
    np.testing.assert_array_equal(plain[0][0], x)
    out = augmented[0][0]
    assert out.shape == x.shape and np.isfinite(out).all() and not np.allclose(out, x)
    augmented.set_epoch(0)
    np.testing.assert_allclose(augmented[0][0], out, atol=1e-6)  # same epoch, same augmentation
    # Inference mode is the identity.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(augmentation(0)(x, training=False)), x)


def test_bad_arguments_name_the_argument():
    x = np.zeros((4, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive integer; got 0"):
        ImageBatches(x, batch_size=0)
    with pytest.raises(ValueError, match=r"`image_shape` is required to read image files"):
        ImageBatches(["a.png", "b.png"])
    with pytest.raises(ValueError, match=r"`labels` has 3 entries for 4 images"):
        ImageBatches(x, np.arange(3))
    with pytest.raises(ValueError, match=r"`images` must be file paths or an array .*got shape \(4, 8\)"):
        ImageBatches(np.zeros((4, 8)))
    nan = x.copy()
    nan[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"batch 1 has NaN or inf pixels in sample 0 \(image 2 of 4\)"):
        ImageBatches(nan, batch_size=2)[1]
