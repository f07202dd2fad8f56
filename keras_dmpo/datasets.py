"""Target data sets: Fashion-MNIST, scikit-learn digits, CIFAR-10 and photo
folders with train/validation/test splits.

Every loader returns the same structure::

    {
        "train": (x, y),
        "validation": (x, y),
        "test": (x, y),
        "class_names": [...],
    }

with float32 images in ``[0, 1]`` of shape ``(N, image_size, image_size,
channels)`` and int32 labels. The validation split is taken from the training
set, stratified by class, with a fixed seed.

Fashion-MNIST goes through the ordinary ``keras.datasets.fashion_mnist``
loader. Keras keeps its downloads in ``$KERAS_HOME/datasets/fashion-mnist/``
(default ``~/.keras``); when those files are missing and the Debian package
``dataset-fashion-mnist`` is installed (``/usr/share/datasets/fashion-mnist/``),
they are copied from there first, so the same Keras call works without a
network. Otherwise Keras downloads them.

Resizing is done with numpy (a separable triangle filter, antialiased when
shrinking), so this module works the same on every Keras backend.
"""

import os
import shutil

import numpy as np

from keras_dmpo import archives, image_folders
from keras_dmpo.keras_cache import keras_cache_dir
from keras_dmpo.optional_deps import require

FASHION_MNIST_CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS_CLASS_NAMES = [str(i) for i in range(10)]

FASHION_MNIST_FILES = (
    "train-labels-idx1-ubyte.gz",
    "train-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
)
# Where Debian's ``dataset-fashion-mnist`` package puts the four files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

MIN_IMAGE_SIZE = 8


def fashion_mnist_cache_dir(cache_dir=None):
    """``<keras cache>/datasets/fashion-mnist``, where Keras looks for the files."""
    return os.path.join(cache_dir or keras_cache_dir(), "datasets", "fashion-mnist")


def seed_fashion_mnist_cache(cache_dir=None, source_dir=None):
    """Copy Debian's Fashion-MNIST files into Keras' cache when it lacks them.

    Args:
        cache_dir: the Keras cache directory (``$KERAS_HOME``); defaults to the
            one Keras uses.
        source_dir: where the four ``*-idx*-ubyte.gz`` files are; defaults to
            ``DEBIAN_FASHION_MNIST_DIR``.

    Returns:
        The list of files copied (empty when the cache was already complete or
        the source directory does not have all four files).
    """
    source_dir = source_dir or DEBIAN_FASHION_MNIST_DIR
    target_dir = fashion_mnist_cache_dir(cache_dir)
    missing = [name for name in FASHION_MNIST_FILES if not os.path.isfile(os.path.join(target_dir, name))]
    if not missing:
        return []
    if not all(os.path.isfile(os.path.join(source_dir, name)) for name in missing):
        return []
    os.makedirs(target_dir, exist_ok=True)
    copied = []
    for name in missing:
        target = os.path.join(target_dir, name)
        # Copy to a temporary name first so an interrupted copy never leaves a
        # truncated file under the name Keras trusts.
        shutil.copyfile(os.path.join(source_dir, name), target + ".part")
        os.replace(target + ".part", target)
        copied.append(target)
    return copied


def _read_fashion_mnist(cache_dir=None):
    import keras

    target_dir = fashion_mnist_cache_dir(cache_dir)
    was_cached = all(os.path.isfile(os.path.join(target_dir, name)) for name in FASHION_MNIST_FILES)
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # noqa: BLE001 - re-raised with advice below.
        if was_cached:
            raise ValueError(
                "The Fashion-MNIST files in Keras' cache "
                f"({target_dir}) are corrupt or truncated ({type(error).__name__}: "
                f"{error}). Delete them and run again: they are re-copied from "
                "the Debian package `dataset-fashion-mnist` when it is installed, "
                "else downloaded by Keras."
            ) from None
        raise ValueError(
            "Could not get Fashion-MNIST: Keras' cache "
            f"({target_dir}) does not have the files and the download failed "
            f"({type(error).__name__}: {error}). Either connect to the internet "
            "(Keras downloads the data), or install the Debian package: "
            "`apt-get install dataset-fashion-mnist` (it puts the files in "
            f"{DEBIAN_FASHION_MNIST_DIR}, which keras_dmpo copies into the cache)."
        ) from None
    if (
        x_train.shape != (60000, 28, 28)
        or y_train.shape != (60000,)
        or x_test.shape != (10000, 28, 28)
        or y_test.shape != (10000,)
    ):
        raise ValueError(
            f"The Fashion-MNIST files in {target_dir} have unexpected sizes "
            f"(train {x_train.shape}/{y_train.shape}, test {x_test.shape}/"
            f"{y_test.shape}); delete them and run again."
        )
    return (x_train, y_train), (x_test, y_test)


def resize_images(images, image_size):
    """Resize a batch of square images with numpy.

    A separable triangle (bilinear) filter whose support widens when
    shrinking, so downscaling is antialiased.

    Args:
        images: array of shape ``(N, H, W)`` or ``(N, H, W, C)``.
        image_size: the output height and width.

    Returns:
        float32 array of shape ``(N, image_size, image_size[, C])``.
    """
    images = np.asarray(images, dtype="float32")
    height, width = images.shape[1:3]
    if (height, width) == (image_size, image_size):
        return images
    rows = _resize_matrix(height, image_size)
    cols = _resize_matrix(width, image_size)
    if images.ndim == 3:
        return np.einsum("ih,nhw,jw->nij", rows, images, cols, optimize=True)
    return np.einsum("ih,nhwc,jw->nijc", rows, images, cols, optimize=True)


def _resize_matrix(size_in, size_out):
    scale = size_in / size_out
    support = max(scale, 1.0)
    centers = (np.arange(size_out) + 0.5) * scale - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(size_in)[None, :] - centers[:, None]) / support)
    return (weights / weights.sum(axis=1, keepdims=True)).astype("float32")


def _check_int(name, value, minimum, maximum=None, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer; got {value!r}.")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"`{name}` must be >= {minimum}{upper}; got {value}.")


def _check_image_args(image_size, channels):
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"`channels` must be 1 or 3; got {channels!r}.")


def _select_classes(x, y, class_names, classes):
    """Keep the samples of ``classes`` and renumber their labels 0..n-1."""
    if classes is None:
        return x, y, list(class_names)
    classes = list(classes)
    indices = []
    for c in classes:
        if isinstance(c, str):
            if c not in class_names:
                raise ValueError(f"`classes`: unknown class name {c!r}; known: {class_names}.")
            c = class_names.index(c)
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise ValueError(f"`classes` must hold ints or names; got {c!r}.")
        if not 0 <= c < len(class_names):
            raise ValueError(f"`classes`: {c} is outside [0, {len(class_names) - 1}].")
        indices.append(int(c))
    if not indices or len(set(indices)) != len(indices):
        raise ValueError(f"`classes` must be a non-empty list without repeats; got {classes}.")
    lookup = np.full(len(class_names), -1, dtype="int64")
    lookup[indices] = np.arange(len(indices))
    new_y = lookup[y]
    keep = new_y >= 0
    return x[keep], new_y[keep], [class_names[i] for i in indices]


def _stratified_take(y, size, seed, argument):
    """Split indices into (taken, rest), ``size`` taken stratified by label."""
    n = len(y)
    if size == 0:
        return np.zeros(0, dtype="int64"), np.arange(n)
    if size == n:
        return np.random.default_rng(seed).permutation(n), np.zeros(0, "int64")
    if size > n:
        raise ValueError(f"`{argument}`={size} does not fit: only {n} samples are available.")
    num_classes = len(np.unique(y))
    if size < num_classes or n - size < num_classes:
        raise ValueError(
            f"`{argument}`={size} does not fit a stratified split of {n} samples "
            f"over {num_classes} classes (each side needs at least one per class)."
        )
    from sklearn.model_selection import train_test_split

    taken, rest = train_test_split(np.arange(n), train_size=size, stratify=y, random_state=seed)
    return np.sort(taken), np.sort(rest)


# ITU-R BT.601 luma, what Pillow's "L" conversion uses.
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype="float32")


def _to_float_images(x, image_size, channels, max_value):
    """Grayscale ``(N, H, W)`` or RGB ``(N, H, W, 3)`` arrays to float
    ``(N, image_size, image_size, channels)`` in [0, 1]."""
    x = np.asarray(x, dtype="float32") / float(max_value)
    x = np.clip(resize_images(x, image_size), 0.0, 1.0)
    if x.ndim == 3:
        x = x[..., None]
        if channels == 3:
            x = np.repeat(x, 3, axis=-1)
    elif channels == 1:
        x = (x @ _LUMA)[..., None]
    return np.ascontiguousarray(x, dtype="float32")


def _make_splits(pool, test, class_names, *, max_value=None, sizes, prepare=None):
    """Train/validation from ``pool``, test from ``test``, images prepared.

    ``sizes``: ``image_size``, ``channels``, ``validation_size``,
    ``train_size``, ``test_size`` and ``seed`` as the loaders take them.
    ``prepare(x)`` turns the selected samples into float images (default:
    pixel arrays scaled by ``max_value``); with it, ``x`` can be file paths,
    so only the images a split keeps are ever decoded.
    """
    (x_pool, y_pool), (x_test, y_test) = pool, test
    image_size, channels, seed = sizes["image_size"], sizes["channels"], sizes["seed"]
    validation_size, train_size, test_size = sizes["validation_size"], sizes["train_size"], sizes["test_size"]
    _check_int("validation_size", validation_size, 0)
    _check_int("train_size", train_size, 1, allow_none=True)
    _check_int("test_size", test_size, 1, allow_none=True)
    if validation_size >= len(y_pool):
        raise ValueError(
            f"`validation_size`={validation_size} does not fit: the training set "
            f"has {len(y_pool)} samples and needs some left for training."
        )
    val_idx, train_idx = _stratified_take(y_pool, validation_size, seed, "validation_size")
    if train_size is not None:
        if train_size > len(train_idx):
            raise ValueError(
                f"`train_size`={train_size} does not fit: {len(train_idx)} "
                f"training samples are left after a validation split of "
                f"{validation_size}."
            )
        take, _ = _stratified_take(y_pool[train_idx], train_size, seed + 1, "train_size")
        train_idx = train_idx[take]
    if test_size is not None:
        if test_size > len(y_test):
            raise ValueError(f"`test_size`={test_size} does not fit: the test set has {len(y_test)} samples.")
        take, _ = _stratified_take(y_test, test_size, seed + 2, "test_size")
        x_test, y_test = x_test[take], y_test[take]

    if prepare is None:

        def prepare(x):
            return _to_float_images(x, image_size, channels, max_value)

    def convert(x, y):
        return (prepare(x), np.asarray(y, dtype="int32"))

    return {
        "train": convert(x_pool[train_idx], y_pool[train_idx]),
        "validation": convert(x_pool[val_idx], y_pool[val_idx]),
        "test": convert(x_test, y_test),
        "class_names": list(class_names),
    }


def load_fashion_mnist(
    image_size=28, channels=3, validation_size=5000, seed=0, train_size=None, test_size=None, classes=None
):
    """Load Fashion-MNIST (Zalando Research, MIT licence) as float images.

    60,000 training and 10,000 test images of 28x28 grayscale clothing, 10
    classes. Goes through ``keras.datasets.fashion_mnist.load_data()``; when
    Keras' cache lacks the files and the Debian package
    ``dataset-fashion-mnist`` is installed, its files are copied into the
    cache first, so no network is needed.

    Args:
        image_size: output height and width (>= 8); 28 keeps the originals.
        channels: 1, or 3 (grayscale repeated, as RGB presets expect).
        validation_size: number of training images held out (stratified) as
            the validation split.
        seed: seed of the validation split and the subsets.
        train_size: if set, a stratified subset of this many training images
            (taken after the validation split).
        test_size: if set, a stratified subset of this many test images.
        classes: optional list of class indices or names to keep; labels are
            renumbered ``0..len(classes)-1`` in the given order and
            ``class_names`` follows.

    Returns:
        A dict with ``"train"``, ``"validation"`` and ``"test"`` ``(x, y)``
        tuples (float32 images in ``[0, 1]``, int32 labels) and
        ``"class_names"``.

    Example:

    >>> data = load_fashion_mnist(validation_size=5000)  # doctest: +SKIP
    >>> data["train"][0].shape  # doctest: +SKIP
    (55000, 28, 28, 3)
    """
    _check_image_args(image_size, channels)
    _check_int("seed", seed, 0)
    seed_fashion_mnist_cache()
    (x_train, y_train), (x_test, y_test) = _read_fashion_mnist()
    x_train, y_train, names = _select_classes(
        x_train, y_train.astype("int64"), FASHION_MNIST_CLASS_NAMES, classes
    )
    x_test, y_test, _ = _select_classes(x_test, y_test.astype("int64"), FASHION_MNIST_CLASS_NAMES, classes)
    sizes = dict(image_size=image_size, channels=channels, validation_size=validation_size)
    sizes.update(train_size=train_size, test_size=test_size, seed=seed)
    return _make_splits((x_train, y_train), (x_test, y_test), names, max_value=255.0, sizes=sizes)


def load_digits(
    image_size=28, channels=3, validation_size=360, test_size=360, seed=0, train_size=None, classes=None
):
    """Load scikit-learn's handwritten digits (UCI, CC BY 4.0) as float images.

    1,797 images of 8x8 pixels with values 0..16, 10 classes; shipped inside
    scikit-learn, so always available offline. The data set has no fixed test
    split: the test and validation splits are both taken from it, stratified,
    with ``seed``.

    Args:
        image_size: output height and width (>= 8); images are upscaled with a
            bilinear filter.
        channels: 1, or 3 (grayscale repeated).
        validation_size: number of images in the validation split.
        test_size: number of images in the test split.
        seed: seed of the splits.
        train_size: if set, a stratified subset of this many training images.
        classes: optional list of class indices or names to keep (labels
            renumbered in the given order).

    Returns:
        A dict with ``"train"``, ``"validation"`` and ``"test"`` ``(x, y)``
        tuples (float32 images in ``[0, 1]``, int32 labels) and
        ``"class_names"``.

    Example:

    >>> data = load_digits(image_size=28)
    >>> data["test"][0].shape
    (360, 28, 28, 3)
    """
    sk_datasets = require("sklearn.datasets", "digits", "load_digits (scikit-learn's digits)")
    _check_image_args(image_size, channels)
    _check_int("seed", seed, 0)
    _check_int("test_size", test_size, 1)
    digits = sk_datasets.load_digits()
    x = digits.images.astype("float32")
    y = digits.target.astype("int64")
    x, y, names = _select_classes(x, y, DIGITS_CLASS_NAMES, classes)
    if test_size >= len(y):
        raise ValueError(
            f"`test_size`={test_size} does not fit: digits has {len(y)} images "
            "and needs some left for training."
        )
    test_idx, pool_idx = _stratified_take(y, test_size, seed + 3, "test_size")
    sizes = dict(image_size=image_size, channels=channels, validation_size=validation_size)
    sizes.update(train_size=train_size, test_size=None, seed=seed)
    pool, test = (x[pool_idx], y[pool_idx]), (x[test_idx], y[test_idx])
    return _make_splits(pool, test, names, max_value=16.0, sizes=sizes)


CIFAR10_CLASS_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR10_KERAS_SOURCE = "keras.datasets.cifar10 (the original arrays)"


def _read_cifar10_arrays():
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:  # noqa: BLE001 - re-raised with advice.
        raise ValueError(
            "Could not get CIFAR-10 through keras.datasets.cifar10 "
            f"({type(error).__name__}: {error}). Connect to the internet (Keras "
            "downloads it once), or pass `source=` a CIFAR-10 JPEG copy: the "
            "archive or its folder with train/<class>/ and test/<class>/."
        ) from None
    return (x_train, y_train.reshape(-1)), (x_test, y_test.reshape(-1))


def load_cifar10(
    image_size=32,
    channels=3,
    validation_size=5000,
    seed=0,
    train_size=None,
    test_size=None,
    classes=None,
    source=None,
    cache_dir=None,
):
    """Load CIFAR-10 (Krizhevsky, 2009) as float images.

    50,000 training and 10,000 test photographs of 32x32 pixels, 10 classes.
    By default through ``keras.datasets.cifar10.load_data()`` (the original
    arrays; Keras downloads them once). With ``source``, a copy saved as
    image files is read instead: a folder with ``train/<class>/`` and
    ``test/<class>/``, or an archive of one (unpacked once into Keras' cache,
    sha256-checked when known). Only the images the splits keep are decoded.
    JPEG copies are lossy, so their numbers are close to, not equal to, the
    original arrays': ``result["source"]`` says which one was read.

    Args:
        image_size: output height and width (>= 8); 32 keeps the originals.
        channels: 3, or 1 (BT.601 luma).
        validation_size: training images held out (stratified) for validation.
        seed: seed of the validation split and the subsets.
        train_size: if set, a stratified subset of this many training images
            (taken after the validation split).
        test_size: if set, a stratified subset of this many test images.
        classes: optional list of class indices or names to keep (labels
            renumbered in the given order).
        source: ``None`` for Keras' arrays, else the path of an image-file
            copy (folder or ``.tar``/``.tar.gz``/``.zip``).
        cache_dir: where archives are unpacked (default
            ``<keras cache>/datasets``).

    Returns:
        The dict of ``load_fashion_mnist`` plus ``"source"``.

    Example:

    >>> data = load_cifar10(112, validation_size=1000, train_size=1000,
    ...                     source="cifar10-jpeg.tar.gz")  # doctest: +SKIP
    >>> data["source"]  # doctest: +SKIP
    'image files at .../cifar10-jpeg-d34c68f61cca'
    """
    _check_image_args(image_size, channels)
    _check_int("seed", seed, 0)
    sizes = dict(image_size=image_size, channels=channels, validation_size=validation_size)
    sizes.update(train_size=train_size, test_size=test_size, seed=seed)
    if source is None:
        (x_train, y_train), (x_test, y_test) = _read_cifar10_arrays()
        prepare, described = None, CIFAR10_KERAS_SOURCE
    else:
        root = archives.dataset_root(source, argument="source", cache_dir=cache_dir)
        x_train, y_train, _ = image_folders.list_class_folder(
            os.path.join(root, "train"), "source", CIFAR10_CLASS_NAMES
        )
        x_test, y_test, _ = image_folders.list_class_folder(
            os.path.join(root, "test"), "source", CIFAR10_CLASS_NAMES
        )

        def prepare(paths):
            return image_folders.read_image_files(paths, (image_size, image_size, channels), "source")

        described = f"image files at {root}"
    x_train, y_train, names = _select_classes(x_train, y_train.astype("int64"), CIFAR10_CLASS_NAMES, classes)
    x_test, y_test, _ = _select_classes(x_test, y_test.astype("int64"), CIFAR10_CLASS_NAMES, classes)
    data = _make_splits(
        (x_train, y_train), (x_test, y_test), names, max_value=255.0, sizes=sizes, prepare=prepare
    )
    data["source"] = described
    return data


SPLIT_FOLDERS = ("train", "validation", "test")


def load_image_splits(
    source,
    image_size=224,
    channels=3,
    resplit=False,
    train_size=None,
    validation_size=None,
    test_size=None,
    seed=0,
    classes=None,
    cache_dir=None,
):
    """Load a photo set kept as ``train/``, ``validation/`` and ``test/``
    folders of class sub-folders (``validation/`` optional).

    Images of any size are resized to ``image_size`` (aspect ratio not kept,
    as ``keras.utils.image_dataset_from_directory`` does) and converted to
    ``channels``. Only the images the splits keep are decoded.

    Args:
        source: the folder, or an archive of it (``.tar``, ``.tar.gz``,
            ``.zip``; unpacked once into Keras' cache, sha256-checked when
            known).
        image_size: output height and width (>= 8).
        channels: 3 (RGB) or 1 (grayscale).
        resplit: ``False`` keeps the folder's splits (``train_size`` and
            ``test_size`` then take stratified subsets; without a
            ``validation/`` folder, ``validation_size`` images are held out
            from ``train/``). ``True`` pools every image and splits them again,
            stratified with ``seed``: ``validation_size`` (required) and
            ``train_size`` images, and ``test_size`` (default: all the rest).
        train_size, validation_size, test_size: split sizes (see ``resplit``).
        seed: seed of every split and subset.
        classes: optional list of class indices or names to keep (labels
            renumbered in the given order).
        cache_dir: where archives are unpacked.

    Returns:
        The dict of ``load_fashion_mnist`` plus ``"source"`` (the folder read
        and how it was split).

    Example:

    >>> data = load_image_splits("clothing-small.tar", 112, resplit=True,
    ...                          train_size=1500, validation_size=500)  # doctest: +SKIP
    """
    _check_image_args(image_size, channels)
    _check_int("seed", seed, 0)
    for name, value in (
        ("train_size", train_size),
        ("validation_size", validation_size),
        ("test_size", test_size),
    ):
        _check_int(name, value, 1, allow_none=True)
    if not isinstance(resplit, bool):
        raise ValueError(f"`resplit` must be True or False; got {resplit!r}.")
    root = archives.dataset_root(source, argument="source", cache_dir=cache_dir)
    present = [s for s in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, s))]
    if "train" not in present or "test" not in present:
        raise ValueError(
            f"`source`={source!r}: expected the folders train/ and test/ (and optionally "
            f"validation/) in {root}; found {sorted(os.listdir(root))}."
        )
    names = None
    files = {}
    for split in present:
        paths, labels, names = image_folders.list_class_folder(os.path.join(root, split), "source", names)
        paths, labels, kept = _select_classes(paths, labels, names, classes)
        files[split] = (paths, labels)
    class_names = kept
    if resplit:
        if validation_size is None:
            raise ValueError("`validation_size` is required with `resplit=True`.")
        if train_size is None and test_size is None:
            raise ValueError(
                "With `resplit=True` give `train_size` or `test_size` (the other takes the rest)."
            )
        x = np.concatenate([files[s][0] for s in present])
        y = np.concatenate([files[s][1] for s in present])
        if validation_size >= len(y):
            raise ValueError(
                f"`validation_size`={validation_size} does not fit: the pool has {len(y)} images "
                "and training and test need some."
            )
        val_idx, rest = _stratified_take(y, validation_size, seed, "validation_size")
        # Training and test both need images: the sizes must leave some for each.
        for name, value, other in (
            ("train_size", train_size, test_size),
            ("test_size", test_size, train_size),
        ):
            if value is not None and value + (other or 1) > len(rest):
                raise ValueError(
                    f"`{name}`={value} does not fit: {len(rest)} images are left after "
                    f"`validation_size`={validation_size}"
                    + (
                        f" and the other split's {other}"
                        if other is not None
                        else ", and the other split needs some"
                    )
                    + "."
                )
        size = train_size if train_size is not None else len(rest) - test_size
        take, left = _stratified_take(y[rest], size, seed + 1, "train_size" if train_size else "test_size")
        train_idx, test_idx = rest[take], rest[left]
        if test_size is not None and train_size is not None and test_size < len(test_idx):
            take, _ = _stratified_take(y[test_idx], test_size, seed + 2, "test_size")
            test_idx = test_idx[take]
        chosen = {"train": (x[train_idx], y[train_idx]), "validation": (x[val_idx], y[val_idx])}
        chosen["test"] = (x[test_idx], y[test_idx])
        how = f"all {len(y)} images pooled and split again, stratified, seed {seed}"
    else:
        chosen = {"train": files["train"], "test": files["test"]}
        if "validation" in files:
            chosen["validation"] = files["validation"]
            if validation_size is not None:
                chosen["validation"] = _subset(
                    *files["validation"], validation_size, seed + 1, "validation_size"
                )
        else:
            if validation_size is None:
                raise ValueError(
                    f"`source`={source!r} has no validation/ folder: give `validation_size` "
                    "(images held out from train/)."
                )
            if validation_size >= len(files["train"][1]):
                raise ValueError(
                    f"`validation_size`={validation_size} does not fit: train/ has "
                    f"{len(files['train'][1])} images and needs some left for training."
                )
            val_idx, train_idx = _stratified_take(files["train"][1], validation_size, seed, "validation_size")
            x, y = files["train"]
            chosen["train"], chosen["validation"] = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
        if train_size is not None:
            chosen["train"] = _subset(*chosen["train"], train_size, seed + 1, "train_size")
        if test_size is not None:
            chosen["test"] = _subset(*chosen["test"], test_size, seed + 2, "test_size")
        how = "the folder's own splits"
    shape = (image_size, image_size, channels)
    data = {
        split: (
            image_folders.read_image_files(chosen[split][0], shape, "source"),
            np.asarray(chosen[split][1], dtype="int32"),
        )
        for split in SPLIT_FOLDERS
    }
    data["class_names"] = list(class_names)
    data["source"] = f"image files at {root} ({how})"
    return data


def _subset(x, y, size, seed, argument):
    take, _ = _stratified_take(y, size, seed, argument)
    return x[take], y[take]


_LOADERS = {
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits,
    "cifar10": load_cifar10,
    "image_splits": load_image_splits,
}


def load_dataset(name, **kwargs):
    """Load a data set by name: ``"fashion_mnist"``, ``"digits"``,
    ``"cifar10"`` or ``"image_splits"`` (a folder given as ``source=``).

    Args:
        name: the data set's name (``-`` and ``_`` are interchangeable).
        **kwargs: passed to its loader.
    """
    key = str(name).lower().replace("-", "_")
    if key not in _LOADERS:
        raise ValueError(f"Unknown data set `name`={name!r}; known: {sorted(_LOADERS)}.")
    return _LOADERS[key](**kwargs)


# --- what the CLI and the demo read: a named data set or a folder ------------
NAMED_DATA = ("fashion_mnist", "digits")


def load_data(spec, image_shape, seed=0, train_size=None, validation_size=None, test_size=None, classes=None):
    """``{"train", "validation", "test", "class_names"}`` for a named data set
    (``NAMED_DATA``, optionally a class subset) or a class-per-folder
    directory (split 70/15/15, stratified), at the model's ``image_shape``.
    What the CLI's ``--data`` and the demo read."""
    height, width, channels = image_shape
    key = spec.lower().replace("-", "_")
    if key in NAMED_DATA:
        if height != width:
            raise ValueError(
                f"--data {spec}: the model's images are {height}x{width}; named data sets need square images."
            )
        kwargs = dict(image_size=height, channels=channels, seed=seed, train_size=train_size, classes=classes)
        if validation_size is not None:
            kwargs["validation_size"] = validation_size
        if test_size is not None:
            kwargs["test_size"] = test_size
        return load_dataset(key, **kwargs)
    check_data_spec(spec)
    x, y, class_names = image_folders.load_image_folder(spec, image_shape)
    return {**_split_folder(x, y, seed), "class_names": class_names}


def check_data_spec(spec):
    """A ``--data`` value that is neither a named data set nor a path gets
    one clear error (a path that does not exist is reported by the reader)."""
    key = spec.lower().replace("-", "_")
    if key not in NAMED_DATA and not os.path.exists(spec) and os.sep not in spec and not spec.startswith("."):
        raise ValueError(
            f"--data {spec!r} is neither a known data set {list(NAMED_DATA)} nor an existing folder."
        )


def _split_folder(x, y, seed, fractions=(0.7, 0.15, 0.15)):
    parts = image_folders.split_indices(y, seed, fractions)
    return {name: (x[ix], y[ix]) for name, ix in zip(("train", "validation", "test"), parts)}
