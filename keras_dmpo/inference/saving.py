"""Saving an EarlyExitModel: the ``.keras`` file and its settings sidecar,
bound by the model file's sha256 and written crash-safely (docs/reliability.md)."""

import json
import os

import keras

from keras_dmpo import atomic_io
from keras_dmpo.hashing import sha256_file
from keras_dmpo.models import dmpo_classifier  # noqa: F401  (registers DMPOClassifier for load_model)

SIDECAR_SUFFIX = ".early_exit.json"


def sidecar_path(model_path):
    """The JSON beside a ``.keras`` file that holds thresholds and calibration."""
    root = model_path[: -len(".keras")] if model_path.endswith(".keras") else model_path
    return root + SIDECAR_SUFFIX


def model_path_of_sidecar(json_path):
    """The ``.keras`` file a sidecar is named after (inverse of
    ``sidecar_path``), or None for a JSON named otherwise."""
    if json_path.endswith(SIDECAR_SUFFIX):
        return json_path[: -len(SIDECAR_SUFFIX)] + ".keras"
    return None


def _model_lock(model_path):
    """The lock that serialises writers of a model and its sidecar."""
    directory, base = os.path.split(os.path.abspath(model_path))
    return atomic_io.exclusive_lock(
        os.path.join(directory, f".{base}.lock"), blocking=True, what=f"saving {model_path!r}"
    )


def _remove_debris(model_path):
    """Temporary files of killed saves of this model (call with the lock held)."""
    directory, base = os.path.split(os.path.abspath(model_path))
    prefixes = tuple(
        f".{name}{atomic_io.PARTIAL_MARK}" for name in (base, os.path.basename(sidecar_path(model_path)))
    )
    for entry in os.listdir(directory):
        if entry.startswith(prefixes):
            atomic_io.remove_quietly(os.path.join(directory, entry))


def _read_settings(settings_path):
    try:
        with open(settings_path) as handle:
            settings = json.load(handle)
    except (OSError, ValueError, RecursionError) as error:
        raise ValueError(f"Corrupt early-exit settings {settings_path!r}: {error}") from None
    if not isinstance(settings, dict):
        raise ValueError(
            f"Corrupt early-exit settings {settings_path!r}: expected a JSON object; got "
            f"{type(settings).__name__}."
        )
    return settings


def _settings_for_model(settings, digest, settings_path, model_path):
    """The settings that belong to the model file with sha256 ``digest``.

    ``None`` when there are none (no sidecar, or a save recorded that the
    model had none). Raises ``ValueError`` for a sidecar of another model.
    """
    if settings is None:
        return None
    recorded = settings.get("model_sha256")
    if recorded is None:
        return settings  # written before sidecars recorded the model's hash
    if recorded == digest:
        return settings
    previous = settings.get("previous")
    if isinstance(previous, dict) and previous.get("model_sha256") == digest:
        # A save was interrupted before it replaced the model: the old model
        # with its own settings.
        return previous.get("settings")
    raise ValueError(
        f"The early-exit settings {settings_path!r} belong to another model file (they "
        f"record sha256 {str(recorded)[:12]}..., {model_path!r} has {digest[:12]}...): "
        "refusing to apply stale thresholds. Calibrate this model again (keras-dmpo "
        "calibrate) or delete the sidecar to use the default thresholds."
    )


def _settings_of_current_model(path, json_path):
    """``{"model_sha256", "settings"}`` of the model now at ``path`` (None if
    there is none), for the sidecar's ``previous`` entry during a save."""
    if not os.path.isfile(path):
        return None
    digest = sha256_file(path)
    try:
        settings = _read_settings(json_path) if os.path.isfile(json_path) else None
        settings = _settings_for_model(settings, digest, json_path, path)
    except ValueError:
        settings = None  # corrupt or stale: the old model had no valid settings
    if settings is not None:
        settings = {k: v for k, v in settings.items() if k != "previous"}
    return {"model_sha256": digest, "settings": settings}


def save_with_settings(model, config, path):
    """Save ``model`` to ``path`` (``.keras``) and ``config`` (the early-exit
    settings) beside it; returns the model file's sha256. See
    ``EarlyExitModel.save`` for the guarantees."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end in .keras; got {path!r}.")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    json_path = sidecar_path(path)
    with _model_lock(path):
        _remove_debris(path)
        temporary = atomic_io.partial_path(path, suffix=".keras")
        try:
            model.save(temporary)
            digest = sha256_file(temporary)
            settings = dict(config, model_sha256=digest)
            previous = _settings_of_current_model(path, json_path)
            if previous is not None:
                # Step 1: the sidecar serves the old and the new model.
                atomic_io.write_json_atomic(json_path, dict(settings, previous=previous))
            atomic_io.replace_file(temporary, path)  # step 2: the new model
        except BaseException:
            atomic_io.remove_quietly(temporary)
            raise
        atomic_io.write_json_atomic(json_path, settings)  # step 3: drop "previous"
    return digest


def save_settings(config, json_path, model_path=None, expected_sha256=None):
    """Write ``config`` to ``json_path`` atomically, bound to ``model_path``'s
    sha256; refuse when that file no longer has ``expected_sha256``. See
    ``EarlyExitModel.save_settings``."""
    json_path = os.fspath(json_path)
    if model_path is None:
        model_path = model_path_of_sidecar(json_path)
    if model_path is None:  # a JSON of another name: not bound to a model file
        atomic_io.write_json_atomic(json_path, config)
        return
    model_path = os.fspath(model_path)
    with _model_lock(model_path):
        _remove_debris(model_path)
        digest = sha256_file(model_path) if os.path.isfile(model_path) else None
        if digest is not None and expected_sha256 not in (None, digest):
            raise ValueError(
                f"{model_path!r} changed since this model was loaded or saved (sha256 "
                f"{expected_sha256[:12]}... then, {digest[:12]}... now): refusing to "
                f"store its thresholds in {json_path!r} for another model. Load the "
                "model again and re-calibrate."
            )
        settings = config
        if digest is not None:
            settings["model_sha256"] = digest
        atomic_io.write_json_atomic(json_path, settings)


def load_with_settings(path, compile=True):
    """``(model, settings or None, model sha256, settings path)`` of a saved
    EarlyExitModel; a sidecar of another model raises ``ValueError``.

    ``compile=False`` skips the saved optimizer, loss and metrics (see
    ``EarlyExitModel.load``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"`path` {path!r} does not exist (expected a .keras file).")
    digest = sha256_file(path)
    model = keras.models.load_model(path, compile=compile)
    if sha256_file(path) != digest:
        raise ValueError(
            f"{path!r} was replaced while it was being loaded (another process saved over it); load it again."
        )
    settings_path = sidecar_path(path)
    settings = _read_settings(settings_path) if os.path.isfile(settings_path) else None
    settings = _settings_for_model(settings, digest, settings_path, path)
    return model, settings, digest, settings_path
