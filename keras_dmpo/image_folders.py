"""Users' own images: a folder with one sub-folder per class.

Read with ``keras.utils.image_dataset_from_directory`` and resized/converted to
the model's image shape. The folder is checked first (with Pillow) so that a
missing folder, a folder without class sub-folders, an empty class or a corrupt
image gives one clear ``ValueError`` instead of a TensorFlow decode traceback.
"""

import os

import numpy as np

from keras_dmpo.optional_deps import require

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def class_folders(directory, argument="--data"):
    """The sorted class sub-folder names of ``directory`` (hidden ones
    skipped); a clear error when there is no such folder or no class."""
    if not os.path.isdir(directory):
        raise ValueError(f"{argument} {directory!r}: no such directory.")
    classes = sorted(
        d
        for d in os.listdir(directory)
        if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")
    )
    if not classes:
        raise ValueError(
            f"{argument} {directory!r} has no class sub-folders; expected one "
            "sub-folder per class, each holding that class's images."
        )
    return classes


def scan_image_folder(directory, argument="--data"):
    """Check the layout and every image; returns ``(class_names, counts)``."""
    Image = require("PIL.Image", "images", "Reading a folder of your own images")

    classes = class_folders(directory, argument)
    counts = []
    for name in classes:
        folder = os.path.join(directory, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(
                f"{argument}: class folder {folder!r} has no images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        for file in files:
            path = os.path.join(folder, file)
            try:
                with Image.open(path) as image:
                    image.verify()
                with Image.open(path) as image:
                    image.load()
            except Exception as error:  # Pillow raises many kinds
                raise ValueError(
                    f"{argument}: cannot read image {path!r} ({type(error).__name__}: {error})."
                ) from None
        counts.append(len(files))
    return classes, counts


def load_image_folder(directory, image_shape, argument="--data"):
    """Images of a class-per-folder directory as arrays for the model.

    Args:
        directory: folder with one sub-folder per class.
        image_shape: the model's ``(height, width, channels)``; images of any
            size or channel count are resized and converted to it.

    Returns:
        ``(x, y, class_names)``: float32 images in [0, 1], int labels.
    """
    import keras

    class_names, _ = scan_image_folder(directory, argument)
    height, width, channels = (int(s) for s in image_shape)
    dataset = keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred",
        label_mode="int",
        class_names=class_names,
        color_mode="rgb" if channels == 3 else "grayscale",
        image_size=(height, width),
        batch_size=64,
        shuffle=False,
        verbose=False,
    )
    images, labels = [], []
    for x, y in dataset.as_numpy_iterator():
        images.append(np.asarray(x, "float32") / 255.0)
        labels.append(np.asarray(y))
    return np.concatenate(images), np.concatenate(labels).astype("int64"), class_names


def list_class_folder(directory, argument="--data", class_names=None):
    """The image files of a class-per-folder directory, without decoding them.

    Args:
        directory: folder with one sub-folder per class.
        argument: the argument's name for error messages.
        class_names: the classes to expect, in label order (so a split folder
            gets the same labels as its sibling); default: the sorted
            sub-folder names.

    Returns:
        ``(paths, labels, class_names)``: a numpy array of file paths (sorted
        within each class), int64 labels, and the class names.
    """
    found = class_folders(directory, argument)
    if class_names is None:
        class_names = found
    elif sorted(class_names) != found:
        raise ValueError(
            f"{argument} {directory!r} has the classes {found}, expected {sorted(class_names)} "
            "(the same classes as the other splits)."
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(directory, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(
                f"{argument}: class folder {folder!r} has no images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        paths.extend(os.path.join(folder, f) for f in files)
        labels.extend([label] * len(files))
    return np.asarray(paths), np.asarray(labels, dtype="int64"), list(class_names)


def read_image_file(path, image_shape, argument="--data"):
    """One image file as float32 ``(height, width, channels)`` in ``[0, 1]``.

    Converted to RGB (or grayscale for one channel) and resized with Pillow's
    antialiased bilinear filter, the aspect ratio not kept, as
    ``keras.utils.image_dataset_from_directory`` does by default. A file
    Pillow cannot read raises a ``ValueError`` naming it.
    """
    Image = require("PIL.Image", "images", "Reading image files")
    height, width, channels = (int(s) for s in image_shape)
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype="float32")
    except Exception as error:  # Pillow raises many kinds
        raise ValueError(
            f"{argument}: cannot read image {path!r} ({type(error).__name__}: {error})."
        ) from None
    return pixels.reshape(height, width, channels) / 255.0


def read_image_files(paths, image_shape, argument="--data", progress=None):
    """Decode and resize image files with Pillow (``read_image_file`` each).

    Args:
        paths: the files.
        image_shape: ``(height, width, channels)``, channels 1 or 3.
        argument: the argument's name for error messages.
        progress: show a progress bar (default: when there are over 2,000
            files).

    Returns:
        float32 array ``(N, height, width, channels)`` in ``[0, 1]``.
    """
    height, width, channels = (int(s) for s in image_shape)
    out = np.empty((len(paths), height, width, channels), dtype="float32")
    bar = None
    if progress is None:
        progress = len(paths) > 2000
    if progress:
        import keras

        bar = keras.utils.Progbar(len(paths), unit_name="image")
    for i, path in enumerate(paths):
        out[i] = read_image_file(path, image_shape, argument)
        if bar is not None and (i + 1) % 250 == 0:
            bar.update(i + 1)
    if bar is not None:
        bar.update(len(paths), finalize=True)
    return out


def split_indices(labels, seed, fractions):
    """Stratified split of ``range(len(labels))`` into ``len(fractions)``
    sorted index arrays, per class in the order validation-like parts first;
    the first part takes what rounding leaves."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in fractions]
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for k in range(1, len(fractions)):
            count = int(round(fractions[k] * len(index)))
            parts[k].extend(index[start : start + count])
            start += count
        parts[0].extend(index[start:])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
