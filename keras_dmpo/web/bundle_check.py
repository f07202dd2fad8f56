"""The Python-side check of a bundle before ``keras-dmpo web`` serves it."""

import os

from keras_dmpo.litert import manifest as manifest_schema
from keras_dmpo.litert.runtime import StagedRuntime

# The same words as the JavaScript runtime's DYNAMIC_BATCH_MESSAGE
# (keras_dmpo/web/js/src/manifest.js); a test keeps the two equal.
DYNAMIC_BATCH_MESSAGE = (
    "graphs have a dynamic batch (-1); LiteRT.js needs batch-1 graphs: export with "
    "`keras-dmpo export --web` / `export_tflite(..., web=True)`"
)


def check_web_bundle(directory):
    """Validate ``directory`` as a bundle for the browser; returns its manifest.

    The manifest schema (``keras_dmpo.litert.read_manifest``), batch-1
    graphs, then every graph file as ``StagedRuntime`` checks it (a regular
    file inside the directory with the manifest's size and sha256; no graph
    is loaded). Raises ``ValueError`` or ``FileNotFoundError`` naming what is
    wrong.
    """
    directory = os.fspath(directory)
    manifest = manifest_schema.read_manifest(directory)
    if manifest_schema.fixed_batch_size(manifest) is None:
        path = os.path.join(directory, manifest_schema.MANIFEST_NAME)
        raise ValueError(f"{path}: {DYNAMIC_BATCH_MESSAGE}.")
    StagedRuntime(directory, verify_hashes=True)
    return manifest
