"""Data archives unpacked once into Keras' cache.

A photo set often arrives as one ``.tar``, ``.tar.gz`` or ``.zip`` file.
``unpack_archive`` turns it into a folder under
``<keras cache>/datasets/`` the first time and returns that folder on every
later call. The unpacking goes to a hidden temporary folder beside the
target, which is renamed into place only when every file is out, so a
killed process never leaves a folder that looks complete. The archive's
sha256 is checked first when one is known (given, or in ``KNOWN_SHA256``),
and recorded in the folder so that a different archive of the same name
gets its own folder.

Standard library only.
"""

import json
import os
import shutil
import tarfile
import zipfile

from keras_dmpo import atomic_io
from keras_dmpo.hashing import sha256_file
from keras_dmpo.keras_cache import keras_cache_dir

# Archives whose content we know (the photo sets the benchmark reads).
KNOWN_SHA256 = {
    "cifar10-jpeg.tar.gz": "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965",
    "clothing-small.tar": "612dc13e5a94bd9c87b14d9ee67e62fc135804f718647ec3e99ab585fb2933a3",
}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MARKER = ".keras_dmpo_unpacked.json"


def is_archive(path):
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _stem(path):
    name = os.path.basename(path)
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def default_cache_dir():
    """``<keras cache>/datasets`` (``$KERAS_HOME``, else ``~/.keras``)."""
    return os.path.join(keras_cache_dir(), "datasets")


def unpack_archive(path, sha256=None, cache_dir=None, argument="source"):
    """Unpack ``path`` into the cache once and return the folder.

    Args:
        path: a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` file.
        sha256: the archive's expected hex sha256; defaults to
            ``KNOWN_SHA256[basename]`` when the name is known, else the
            archive is taken as it is.
        cache_dir: where the folder goes (default ``<keras cache>/datasets``).
        argument: the argument's name for error messages.

    Returns:
        The unpacked folder, ``<cache_dir>/<stem>-<first 12 hex of sha256>``.

    Example:

    >>> folder = unpack_archive("cifar10-jpeg.tar.gz")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"`{argument}`={path!r}: no such file.")
    if not is_archive(path):
        raise ValueError(
            f"`{argument}`={path!r} is not an archive this can unpack; expected one of {ARCHIVE_SUFFIXES}."
        )
    expected = sha256 or KNOWN_SHA256.get(os.path.basename(path))
    actual = sha256_file(path)
    if expected is not None and actual != expected.lower():
        raise ValueError(
            f"`{argument}`={path!r} has sha256 {actual}, expected {expected}: the file is "
            "truncated, corrupt or a different version. Get it again."
        )
    cache_dir = cache_dir or default_cache_dir()
    target = os.path.join(cache_dir, f"{_stem(path)}-{actual[:12]}")
    if _is_complete(target, actual):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_io.exclusive_lock(target + ".lock", what=f"unpacking {os.path.basename(path)}"):
        if _is_complete(target, actual):  # another process finished meanwhile
            return target
        temporary = atomic_io.partial_path(target)
        try:
            os.makedirs(temporary)
            _extract(path, temporary, argument)
            with open(os.path.join(temporary, MARKER), "w") as handle:
                json.dump({"archive": os.path.basename(path), "sha256": actual}, handle)
            if os.path.exists(target):
                # An older folder without our marker (a killed run cannot
                # leave one; somebody put it there): keep it aside, not lost.
                os.replace(target, atomic_io.partial_path(target, ".previous"))
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                shutil.rmtree(temporary, ignore_errors=True)
    return target


def _is_complete(folder, sha256):
    try:
        with open(os.path.join(folder, MARKER)) as handle:
            return json.load(handle).get("sha256") == sha256
    except (OSError, ValueError):
        return False


def _extract(path, destination, argument="source"):
    root = os.path.realpath(destination)
    try:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    resolved = os.path.realpath(os.path.join(destination, name))
                    if resolved != root and not resolved.startswith(root + os.sep):
                        raise ValueError(
                            f"`{argument}`={path!r}: member {name!r} points outside the archive's folder."
                        )
                archive.extractall(destination)
            return
        if not hasattr(tarfile, "data_filter"):
            raise ValueError(
                f"`{argument}`={path!r}: unpacking tar archives safely needs Python >= 3.11.4 "
                "(tarfile's 'data' filter); unpack it yourself and pass the folder."
            )
        with tarfile.open(path) as archive:
            # "data": no absolute paths, no links out of the folder, no devices.
            archive.extractall(destination, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(
            f"`{argument}`={path!r}: cannot unpack it ({type(error).__name__}: {error})."
        ) from None


def dataset_root(source, argument="source", cache_dir=None, sha256=None):
    """The folder a photo set lives in: ``source`` itself when it is a
    folder, else the folder its archive unpacks to. Descends through a lone
    top-level folder (``archive/cifar10/train/...``)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        root = source
    elif os.path.isfile(source):
        root = unpack_archive(source, sha256=sha256, cache_dir=cache_dir, argument=argument)
    else:
        raise ValueError(f"`{argument}`={source!r}: no such file or folder.")
    while True:
        entries = [e for e in os.listdir(root) if not e.startswith(".")]
        if len(entries) == 1 and os.path.isdir(os.path.join(root, entries[0])):
            if entries[0] in ("train", "test", "validation"):
                return root
            root = os.path.join(root, entries[0])
            continue
        return root
