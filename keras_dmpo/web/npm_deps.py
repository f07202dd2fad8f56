"""LiteRT.js (and, for the tests, puppeteer-core) installed once from the lockfile.

The wheel ships ``js/package.json`` and ``js/package-lock.json``, not the
40 MB of wasm they resolve to. On first use ``npm ci`` installs exactly the
locked versions into a cache directory named after the lockfile's hash
(in Keras' cache directory beside the presets, never inside site-packages), so an
upgrade of keras_dmpo that changes the lockfile gets a fresh install and an
unchanged one reuses it. The install runs in a hidden staging directory
that is renamed into place when complete: a directory with the final name
is always a whole install.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile

from keras_dmpo import atomic_io
from keras_dmpo.keras_cache import keras_cache_dir
from keras_dmpo.web import JS_DIR

LOCKFILE = os.path.join(JS_DIR, "package-lock.json")
PACKAGE_JSON = os.path.join(JS_DIR, "package.json")
# Set to an existing node_modules folder to use it instead (offline set-ups).
NODE_MODULES_ENV = "KERAS_DMPO_WEB_NODE_MODULES"
# What a usable install holds (the runtime's only dependency and its wasm).
REQUIRED_PATH = os.path.join("@litertjs", "core", "wasm")
NPM_TIMEOUT_S = 900


def cache_root():
    """``keras_dmpo/web`` in Keras' cache directory (``$KERAS_HOME``, default
    ``~/.keras``), beside the fetched presets."""
    return os.path.join(keras_cache_dir(), "keras_dmpo", "web")


def lockfile_key(dev=False):
    """The install's name: the lockfile's sha256 (16 hex digits), ``-dev`` with devDependencies."""
    with open(LOCKFILE, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:16]
    return f"npm-{digest}" + ("-dev" if dev else "")


def find_npm():
    """The npm executable, or a ``RuntimeError`` saying in one line what to install."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "npm was not found on PATH: keras_dmpo.web needs Node.js >= 18 with npm to install "
            "LiteRT.js once (Debian: apt-get install nodejs npm)."
        )
    return npm


def ensure_node_modules(dev=False):
    """The ``node_modules`` folder of the locked install, installing it on first use.

    Args:
        dev: include the devDependencies (puppeteer-core, for the browser
            tests and ``keras_dmpo.web.screenshot``).

    Returns:
        The path of ``node_modules`` (``@litertjs/core`` and
        ``@litertjs/wasm-utils`` inside).
    """
    override = os.environ.get(NODE_MODULES_ENV)
    if override:
        if not os.path.isdir(os.path.join(override, REQUIRED_PATH)):
            raise RuntimeError(
                f"{NODE_MODULES_ENV}={override!r} has no {REQUIRED_PATH}: expected a node_modules folder "
                f"installed from {LOCKFILE} (npm ci)."
            )
        return override
    root = cache_root()
    key = lockfile_key(dev)
    final = os.path.join(root, key)
    modules = os.path.join(final, "node_modules")
    if os.path.isdir(modules):
        return modules
    npm = find_npm()
    os.makedirs(root, exist_ok=True)
    with atomic_io.exclusive_lock(os.path.join(root, f".{key}.lock"), what="installing LiteRT.js"):
        if os.path.isdir(modules):  # another process finished it while we waited
            return modules
        staging = tempfile.mkdtemp(prefix=f".{key}{atomic_io.PARTIAL_MARK}", dir=root)
        try:
            _npm_ci(npm, staging, dev)
            os.chmod(staging, 0o755)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        atomic_io.fsync_directory(root)
    return modules


def _npm_ci(npm, directory, dev):
    for path in (PACKAGE_JSON, LOCKFILE):
        shutil.copy(path, directory)
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    if not dev:
        command.append("--omit=dev")
    print(f"Installing LiteRT.js once from {LOCKFILE} into {cache_root()} (npm ci) ...", flush=True)
    try:
        result = subprocess.run(
            command, cwd=directory, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`npm ci` did not finish within {NPM_TIMEOUT_S} s (in {directory}).") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {result.returncode}):\n{tail}")
    if not os.path.isdir(os.path.join(directory, "node_modules", REQUIRED_PATH)):
        raise RuntimeError(f"`npm ci` finished but {REQUIRED_PATH} is missing in {directory}/node_modules.")
