"""Sample images beside an export bundle, for the browser page to show.

``keras-dmpo web`` serves a bundle with a page that runs each sample image
through the stage graphs and shows the exit it took. The samples live in
``BUNDLE/samples/``: PNG files and ``index.json``, outside the manifest (they
are not part of the model, and a runtime never reads them).
"""

import json
import os
import shutil
import tempfile

import numpy as np

from keras_dmpo import atomic_io
from keras_dmpo.litert.manifest import read_manifest

SAMPLES_DIR = "samples"
INDEX_NAME = "index.json"
MAX_SAMPLES = 256


def write_web_samples(bundle_dir, images, labels=None, overwrite=False):
    """Write ``images`` as PNGs and an index into ``bundle_dir/samples/``.

    Args:
        bundle_dir: an export bundle (holds ``manifest.json``).
        images: ``(N, H, W, C)`` raw images in the manifest's
            ``preprocessing['input_range']`` with its ``image_shape``, the
            same images ``StagedRuntime.predict`` takes (at most 256).
        labels: optional ``(N,)`` true class indices, shown beside the
            predictions; names come from the manifest's ``class_names``.
        overwrite: replace an existing ``samples/``.

    Returns:
        The index (dict) that was written: ``{"images": [{"file", "label",
        "label_name"}, ...]}``.

    The directory appears complete or not at all: it is written under a
    temporary name and renamed.

    Example (TensorFlow backend, where the export runs in-process):

    >>> from keras_dmpo import DMPOClassifier, EarlyExitModel
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 8])
    >>> _ = EarlyExitModel(model, thresholds=[0.5, 0.0]).export_tflite("bundle/", web=True)
    >>> images = np.random.rand(4, 28, 28, 3)   # raw range [0, 1]
    >>> write_web_samples("bundle/", images, labels=[0, 1, 2, 0])["images"][0]
    {'file': '0000.png', 'label': 0, 'label_name': None}
    """
    from PIL import Image

    bundle_dir = os.fspath(bundle_dir)
    manifest = read_manifest(bundle_dir)
    images = _check_images(images, manifest)
    labels = _check_labels(labels, len(images), manifest["num_classes"])
    target = os.path.join(bundle_dir, SAMPLES_DIR)
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"{target!r} exists; pass overwrite=True to replace the samples.")
    names = manifest.get("class_names")
    low, high = manifest["preprocessing"]["input_range"]
    pixels = np.clip(np.rint((images - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)
    staging = tempfile.mkdtemp(prefix=f".{SAMPLES_DIR}{atomic_io.PARTIAL_MARK}", dir=bundle_dir)
    try:
        entries = []
        for i, image in enumerate(pixels):
            name = f"{i:04d}.png"
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                os.path.join(staging, name)
            )
            label = None if labels is None else int(labels[i])
            entries.append(
                {
                    "file": name,
                    "label": label,
                    "label_name": None if names is None or label is None else names[label],
                }
            )
        index = {"images": entries}
        with open(os.path.join(staging, INDEX_NAME), "w", encoding="utf-8") as handle:
            json.dump(index, handle, indent=1)
        os.chmod(staging, 0o755)
        if os.path.lexists(target):
            old = tempfile.mkdtemp(prefix=f".{SAMPLES_DIR}.old-", dir=bundle_dir)
            os.rename(target, os.path.join(old, SAMPLES_DIR))
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return index


def _check_images(images, manifest):
    image_shape = tuple(manifest["image_shape"])
    array = np.asarray(images)
    if array.ndim != 4 or tuple(array.shape[1:]) != image_shape or not 1 <= len(array) <= MAX_SAMPLES:
        raise ValueError(
            f"`images` must be an array of shape (N, {', '.join(map(str, image_shape))}) with 1 <= N <= "
            f"{MAX_SAMPLES} (the manifest's image_shape); got shape {array.shape}."
        )
    if image_shape[-1] not in (1, 3):
        raise ValueError(f"`images` must have 1 or 3 channels to be shown as PNGs; got {image_shape[-1]}.")
    if array.dtype.kind not in "fiu" or not np.all(np.isfinite(array)):
        raise ValueError(f"`images` must hold finite numbers; got dtype {array.dtype} or NaN/inf pixels.")
    return array.astype(np.float64)


def _check_labels(labels, count, num_classes):
    if labels is None:
        return None
    array = np.asarray(labels)
    if (
        array.shape != (count,)
        or array.dtype.kind not in "iu"
        or (count and (array.min() < 0 or array.max() >= num_classes))
    ):
        raise ValueError(
            f"`labels` must be None or {count} integers in [0, {num_classes}) (one class index per image); "
            f"got {labels!r:.80}."
        )
    return array
