"""File digests. Standard library only, and no locks.

``keras_dmpo.litert`` checks stage files against the manifest's hashes; it
imports this module, not ``atomic_io``, so that the runtime loads where
``fcntl`` or ``ctypes`` do not (Windows, some sandboxes).
"""

import hashlib


def sha256_file(path, chunk_size=1 << 20):
    """Hex sha256 of a file, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
