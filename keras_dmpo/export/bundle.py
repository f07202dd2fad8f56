"""Writing an export bundle: staging, hashing, the manifest, one atomic publish.

Every format (TFLite, ONNX) hands this driver a converter: a function from a
Keras model to the file's bytes and its input/output specs. The driver
writes each stage into a private staging directory next to the target,
hashes it, builds the manifest from the ``ExportSpec``, checks it against
the runtime's schema and publishes the directory in one atomic step, so the
target is always either the previous complete export or the new one.
"""

import collections
import contextlib
import hashlib
import json
import os
import shutil
import tempfile

from keras_dmpo import atomic_io
from keras_dmpo.litert import MANIFEST_NAME, validate_manifest

# The manifest's name inside a staging directory until the export is
# complete (see staging_directory).
PENDING_MANIFEST_NAME = ".manifest.json.pending"


def check_stage_models(stage_models):
    """A non-empty list of models, or a ``ValueError`` naming ``stage_models``."""
    if (
        isinstance(stage_models, (str, bytes))
        or not hasattr(stage_models, "__len__")
        or not len(stage_models)
    ):
        raise ValueError(f"`stage_models` must be a non-empty list of Keras models; got {stage_models!r}.")
    return list(stage_models)


BundleFormat = collections.namedtuple("BundleFormat", ["name", "suffix", "created_by"])
BundleFormat.__doc__ = """A format's manifest ``format``, its files' extension and its writer's name."""


def write_bundle(
    directory,
    spec,
    stage_models,
    convert,
    fmt,
    *,
    monolithic_model=None,
    quantization=None,
    overwrite=False,
    manifest_extra=None,
):
    """Convert and write every stage (and the monolithic model) plus ``manifest.json``.

    Args:
        directory: the export directory (see ``staging_directory``).
        spec: the ``ExportSpec``.
        stage_models: K Keras stage models.
        convert: ``convert(model, index)`` -> ``(payload_bytes, io)`` where
            ``io`` is ``{"inputs": [...], "outputs": [...]}`` (plus any other
            keys for the stage's manifest entry); ``index`` is the 0-based
            stage, or ``None`` for the monolithic model.
        fmt: the ``BundleFormat`` (manifest ``format``, file extension, writer).
        quantization: recorded in the manifest.
        manifest_extra: top-level manifest keys of this format (e.g.
            ``opset``): a dict, or a function returning one, called once
            every graph is converted (a quantizer records the recipe it
            applied, which grows graph by graph).

    Returns:
        The manifest (dict) that was written.
    """
    with staging_directory(directory, overwrite) as staging:
        stages = [
            spec.stage_entry(k, _write_file(staging, f"stage_{k + 1}.{fmt.suffix}", *convert(model, k)))
            for k, model in enumerate(stage_models)
        ]
        monolithic = None
        if monolithic_model is not None:
            monolithic = _write_file(staging, f"monolithic.{fmt.suffix}", *convert(monolithic_model, None))
            monolithic["flops"] = spec.full_model_flops
        manifest = spec.manifest(
            fmt.name,
            num_classes=_num_classes(stages[-1]),
            quantization=quantization,
            created_by=fmt.created_by,
            stages=stages,
            monolithic=monolithic,
        )
        manifest.update((manifest_extra() if callable(manifest_extra) else manifest_extra) or {})
        if fmt.name == "tflite":
            # The runtime's own schema check: an export it would refuse is a
            # bug here, caught before anything is published.
            validate_manifest(json.loads(json.dumps(manifest)), source="the new manifest")
        write_manifest(staging, manifest)  # last: a directory with a manifest is complete
    return manifest


def _write_file(staging, name, payload, io):
    with open(os.path.join(staging, name), "wb") as handle:
        handle.write(payload)
    return {"file": name, "sha256": hashlib.sha256(payload).hexdigest(), "size_bytes": len(payload), **io}


def _num_classes(entry):
    for spec in entry["outputs"]:
        if spec["name"] == "probabilities":
            return int(spec["shape"][-1])
    raise RuntimeError(f"{entry['file']} has no 'probabilities' output: {entry['outputs']}.")


def check_output_directory(directory, overwrite):
    """Refuse an existing non-empty directory unless ``overwrite``."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise FileExistsError(f"Export path {directory!r} exists and is not a directory.")
        if os.listdir(directory) and not overwrite:
            raise FileExistsError(
                f"Export directory {directory!r} exists and is not empty; pass overwrite=True to replace it."
            )
    return directory


def lock_path(directory):
    """The lock file beside an export directory (held while exporting to it)."""
    parent, base = os.path.split(os.path.abspath(os.fspath(directory)))
    return os.path.join(parent, f".{base}.lock")


@contextlib.contextmanager
def staging_directory(directory, overwrite):
    """Yield a temporary sibling directory; on success, publish it as ``directory``.

    Files are written into ``.NAME.partial-XXXX``; ``write_manifest`` puts the
    manifest there under a pending name. Publishing renames the directory to
    ``.NAME.ready-XXXX``, gives the manifest its real name (the bundle is now
    complete) and swaps it with the target in one atomic step (Linux
    ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames). So at every
    moment the target is the old complete export or the new complete one,
    a directory holding ``manifest.json`` is always complete, and a
    ``.partial-`` directory never holds one. A failure removes the temporary
    directory and keeps the previous export.

    A second process exporting to the same directory at the same time gets
    ``FileExistsError`` at once (a lock file beside the target, held from the
    check of the target to the end of the publication; it is removed after).
    Leftovers of killed exports to the same target are removed under the
    lock.
    """
    directory = check_output_directory(directory, overwrite)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(directory)
    with atomic_io.exclusive_lock(lock_path(directory), blocking=False, what=f"exporting to {directory!r}"):
        check_output_directory(directory, overwrite)  # again, now that we hold the lock
        _remove_debris(parent, base)
        staging = tempfile.mkdtemp(prefix=f".{base}{atomic_io.PARTIAL_MARK}", dir=parent)
        # mkdtemp makes the directory private (0700); an export is meant to be read.
        os.chmod(staging, 0o755)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _publish(staging, directory)


DEBRIS_MARKS = (atomic_io.PARTIAL_MARK, ".ready-", ".old-")


def _remove_debris(parent, base):
    """Temporary directories of killed exports to the same target (only
    called with the target's lock held, so none of them is in use)."""
    prefixes = tuple(f".{base}{mark}" for mark in DEBRIS_MARKS)
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith(prefixes) and os.path.isdir(path) and not os.path.islink(path):
            _discard(path)


def _discard(path):
    """Remove an export directory, its manifest first (so that a kill during
    the removal cannot leave a directory that looks complete)."""
    atomic_io.remove_quietly(os.path.join(path, MANIFEST_NAME))
    shutil.rmtree(path, ignore_errors=True)


def _publish(staging, directory):
    parent, base = os.path.split(directory)
    token = os.path.basename(staging)[len(f".{base}{atomic_io.PARTIAL_MARK}") :]
    ready = os.path.join(parent, f".{base}.ready-{token}")
    try:
        for entry in os.listdir(staging):  # durable before anything is renamed
            atomic_io.fsync_file(os.path.join(staging, entry))
        os.rename(staging, ready)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        pending = os.path.join(ready, PENDING_MANIFEST_NAME)
        if not os.path.isfile(pending):
            raise RuntimeError(f"internal error: the export in {ready!r} has no manifest")
        os.replace(pending, os.path.join(ready, MANIFEST_NAME))  # complete from here on
        atomic_io.fsync_directory(ready)
        if not os.path.exists(directory):
            os.rename(ready, directory)
        elif atomic_io.exchange_paths(ready, directory):
            pass  # ``ready`` now holds the previous export
        else:
            # No atomic swap here: move the old export aside, then rename.
            # (Between the two renames the target is briefly absent.)
            old = os.path.join(parent, f".{base}.old-{token}")
            os.rename(directory, old)
            try:
                os.rename(ready, directory)
            except BaseException:
                os.rename(old, directory)
                raise
            ready = old
        atomic_io.fsync_directory(parent)
    except BaseException:
        _discard(ready)
        raise
    if os.path.exists(ready):
        _discard(ready)  # the previous export


def write_manifest(staging, manifest):
    """Write the manifest into ``staging`` under its pending name; publishing
    renames it to ``manifest.json`` once the directory is no longer a
    ``.partial-`` one."""
    path = os.path.join(staging, PENDING_MANIFEST_NAME)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    return path
