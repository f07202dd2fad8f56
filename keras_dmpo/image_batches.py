"""Images as a stream of batches, never held whole in memory.

``ImageBatches`` is a ``keras.utils.PyDataset`` over image files (decoded and
resized per batch, in threads) or over an array, with a per-epoch shuffle and
training-time augmentation that both depend only on ``(seed, epoch)``: a run
resumed at an epoch boundary sees the same batches as an uninterrupted one.
It feeds ``DMPOClassifier.fit``/``evaluate``/``predict`` and every
``EarlyExitModel`` method on all three backends.
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from keras_dmpo import datasets, image_folders
from keras_dmpo.litert import non_finite_samples

# Zoom in by up to this fraction of each side (a random resized crop of
# 56-100% of the area), shift by up to this fraction, flip left-right.
AUGMENT_ZOOM = 0.25
AUGMENT_SHIFT = 0.1


def augmentation(seed=0):
    """The training-time augmentation: Keras' own random zoom-in (with the
    shift, a random resized crop) and horizontal flip.

    It runs in the input pipeline, never inside the model, so it cannot
    reach the exported stage graphs.

    Args:
        seed: the layers' seed.

    Example:
    >>> import numpy as np
    >>> augment = augmentation(seed=0)
    >>> tuple(augment(np.zeros((2, 32, 32, 3), "float32"), training=True).shape)
    (2, 32, 32, 3)
    """
    seed = int(seed) % (2**31 - 3)
    return keras.Sequential(
        [
            keras.layers.RandomZoom((-AUGMENT_ZOOM, 0.0), fill_mode="reflect", seed=seed),
            keras.layers.RandomTranslation(AUGMENT_SHIFT, AUGMENT_SHIFT, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomFlip("horizontal", seed=seed + 2),
        ],
        name="augmentation",
    )


class ImageBatches(keras.utils.PyDataset):
    """Batches of ``(images, labels)`` from image files or an array.

    Every batch is checked for NaN/inf pixels as it is made (arrays) or
    cannot hold any (decoded files).

    Files are decoded and resized when their batch is asked for, by
    ``threads`` threads (Pillow releases the GIL while decoding), so memory
    holds a batch, not the data set. Batches are produced in order, in the
    caller's thread: the shuffle and the augmentation are then reproducible.

    Args:
        images: file paths (a list or array of strings) or an array
            ``(N, H, W, C)`` of images in ``[0, 1]``.
        labels: ``(N,)`` integer labels, or None (batches are then images
            only).
        image_shape: ``(height, width, channels)`` files are resized and
            converted to; required for files.
        batch_size: images per batch (the last batch may be smaller).
        shuffle: a new order every epoch, from ``(seed, epoch)``.
        seed: seed of the shuffle and the augmentation.
        augment: apply ``augmentation()`` (training only).
        skip_bad_images: leave out files that cannot be decoded and count
            them in ``bad_files``, instead of raising a ``ValueError`` naming
            the file.
        threads: decoding threads (default: the CPU count, at most 8).
        argument: the argument's name in error messages.

    Example:
    >>> import numpy as np
    >>> batches = ImageBatches(np.zeros((10, 8, 8, 3), "float32"), np.arange(10) % 2, batch_size=4)
    >>> len(batches), batches[2][0].shape
    (3, (2, 8, 8, 3))
    """

    def __init__(
        self,
        images,
        labels=None,
        image_shape=None,
        batch_size=32,
        shuffle=False,
        seed=0,
        augment=False,
        skip_bad_images=False,
        threads=None,
        argument="--data",
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
        self.from_files = _is_paths(images)
        if self.from_files:
            self.images = np.asarray(images, dtype=object)
            if image_shape is None:
                raise ValueError("`image_shape` is required to read image files: (height, width, channels).")
            self.image_shape = tuple(int(s) for s in image_shape)
        else:
            self.images = images
            if np.ndim(images) != 4:
                raise ValueError(
                    f"`images` must be file paths or an array (N, height, width, channels); "
                    f"got shape {np.shape(images)}."
                )
            self.image_shape = tuple(int(s) for s in np.shape(images)[1:])
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != len(self.images):
                raise ValueError(f"`labels` has {len(labels)} entries for {len(self.images)} images.")
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.skip_bad_images = bool(skip_bad_images)
        self.threads = int(threads or min(8, os.cpu_count() or 1))
        self.argument = argument
        self.bad_files = []
        self._pool = None
        self._prefetcher = None
        self._prefetched = {}
        self.set_epoch(0)

    # Its batches are checked as they are made (``stream_checks``).
    checks_its_batches = True

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    @property
    def num_images(self):
        return len(self.images)

    def set_epoch(self, epoch):
        """Use epoch ``epoch``'s order and augmentation (``epoch_callback``
        calls it at the start of every epoch, a resumed one included)."""
        self.epoch = int(epoch)
        n = len(self.images)
        rng = np.random.default_rng([self.seed, self.epoch])
        self._order = rng.permutation(n) if self.shuffle else np.arange(n)
        self._prefetched = {}  # decoded in another epoch's order
        self._augmentation = augmentation(self.seed * 1000 + self.epoch) if self.augment else None

    def materialize(self):
        """Every batch, in order, as arrays ``(images, labels)``: for data
        known to fit in memory (timing without decoding)."""
        batches = [self[i] for i in range(len(self))]
        labels = None if self.labels is None else np.concatenate([b[1] for b in batches])
        return np.concatenate([b[0] for b in batches]), labels

    def epoch_callback(self):
        """A Keras callback keeping this stream's epoch in step with ``fit``."""
        stream = self

        class _SetEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                stream.set_epoch(epoch)

        return _SetEpoch()

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        rows = self._rows(index)
        if self.from_files:
            # The next batch is decoded while the model runs on this one.
            future = self._prefetched.pop((self.epoch, index), None)
            images, rows = future.result() if future is not None else self._decode(rows, index)
            self._prefetch(index + 1)
        else:
            # A contiguous slice when in order: memory-mapped arrays then
            # read only the batch.
            images = np.asarray(self.images[rows] if self.shuffle else self.images[rows[0] : rows[-1] + 1])
            images = images.astype("float32", copy=False)
            bad = non_finite_samples(images)
            if bad.size:
                raise ValueError(
                    f"{self.argument}: batch {index} has NaN or inf pixels in sample {int(bad[0])} "
                    f"(image {int(rows[bad[0]])} of {len(self.images)}); expected finite pixels."
                )
        if self._augmentation is not None:
            images = keras.ops.convert_to_numpy(self._augmentation(images, training=True))
        if self.labels is None:
            return (images,)
        return images, self.labels[rows]

    def _rows(self, index):
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]

    def _prefetch(self, index):
        if index >= len(self) or (self.epoch, index) in self._prefetched:
            return
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1)
        self._prefetched = {
            (self.epoch, index): self._prefetcher.submit(self._decode, self._rows(index), index)
        }

    def _decode(self, rows, index):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads)

        def read(path):
            try:
                return image_folders.read_image_file(path, self.image_shape, self.argument)
            except ValueError as error:
                if not self.skip_bad_images:
                    raise ValueError(
                        f"{error} (batch {index}; pass --skip-bad-images / skip_bad_images=True "
                        "to leave unreadable files out)"
                    ) from None
                return None

        decoded = list(self._pool.map(read, self.images[rows]))
        kept = [i for i, image in enumerate(decoded) if image is not None]
        for i, image in enumerate(decoded):
            if image is None and self.images[rows[i]] not in self.bad_files:
                self.bad_files.append(str(self.images[rows[i]]))
        if not kept:
            raise ValueError(f"{self.argument}: every image of batch {index} is unreadable.")
        return np.stack([decoded[i] for i in kept]), rows[kept]

    def __getstate__(self):  # the thread pool does not pickle
        state = dict(self.__dict__)
        state.update(_pool=None, _prefetcher=None, _prefetched={})
        return state


def _is_paths(images):
    if isinstance(images, (list, tuple)):
        return len(images) > 0 and isinstance(images[0], (str, os.PathLike))
    array = np.asarray(images) if not hasattr(images, "dtype") else images
    return array.dtype.kind in "USO" and np.ndim(array) == 1


def folder_batches(directory, image_shape, batch_size=32, argument="--data", **kwargs):
    """``ImageBatches`` over every image of a class-per-folder directory
    (scanned by name only, no decoding), with its class names.

    Returns:
        ``(batches, class_names)``.
    """
    paths, labels, class_names = image_folders.list_class_folder(directory, argument)
    return ImageBatches(paths, labels, image_shape, batch_size, argument=argument, **kwargs), class_names


def data_streams(
    spec,
    image_shape,
    seed=0,
    batch_size=64,
    train_size=None,
    augment=False,
    skip_bad_images=False,
    fractions=(0.7, 0.15, 0.15),
):
    """``{"train", "validation", "test", "class_names"}`` as ``ImageBatches``
    for the CLI's ``--data``: a named data set's splits (arrays, wrapped), or
    a class-per-folder directory split by a stratified, seeded draw of its
    file names and decoded batch by batch. The training stream shuffles
    every epoch and, with ``augment``, augments.
    """
    key = spec.lower().replace("-", "_")
    train_kwargs = dict(shuffle=True, seed=seed, augment=augment)
    if key in datasets.NAMED_DATA:
        data = datasets.load_data(spec, image_shape, seed=seed, train_size=train_size)
        streams = {
            split: ImageBatches(
                *data[split], batch_size=batch_size, **(train_kwargs if split == "train" else {})
            )
            for split in ("train", "validation", "test")
        }
        return {**streams, "class_names": data["class_names"]}
    datasets.check_data_spec(spec)
    paths, labels, class_names = image_folders.list_class_folder(spec, "--data")
    parts = dict(zip(("train", "validation", "test"), image_folders.split_indices(labels, seed, fractions)))
    if train_size is not None:
        parts["train"] = parts["train"][: int(train_size)]
    streams = {
        split: ImageBatches(
            paths[index],
            labels[index],
            image_shape,
            batch_size,
            skip_bad_images=skip_bad_images,
            **(train_kwargs if split == "train" else {}),
        )
        for split, index in parts.items()
    }
    return {**streams, "class_names": class_names}
