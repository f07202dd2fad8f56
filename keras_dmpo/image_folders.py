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


def scan_image_folder(directory, argument="--data"):
    """Check the layout and every image; returns ``(class_names, counts)``."""
    Image = require("PIL.Image", "images", "Reading a folder of your own images")

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
