"""Headless Chromium driven from Node (puppeteer-core): finding the tools.

The screenshot (``keras_dmpo.web.screenshot``) and the browser tests run a
small Node script that launches the system's Chromium; puppeteer-core comes
from the locked install (``npm_deps.ensure_node_modules(dev=True)``). Each
missing tool is a ``RuntimeError`` saying in one line what to install.
"""

import os
import shutil

from keras_dmpo.web import JS_DIR

CHROMIUM_ENV = "KERAS_DMPO_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Where the Node scripts find puppeteer-core (js/tools/chromium.mjs reads it).
NODE_MODULES_ENV = "KERAS_DMPO_NODE_MODULES"
TOOLS_DIR = os.path.join(JS_DIR, "tools")


def find_chromium():
    """``$KERAS_DMPO_CHROMIUM``, else the first of ``CHROMIUM_NAMES`` on PATH."""
    path = os.environ.get(CHROMIUM_ENV)
    if path:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise RuntimeError(f"{CHROMIUM_ENV}={path!r} is not an executable file.")
        return path
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        f"Chromium was not found ({', '.join(CHROMIUM_NAMES)} on PATH, or ${CHROMIUM_ENV}): "
        "install it (Debian: apt-get install chromium)."
    )


def find_node():
    """The ``node`` executable (Node.js >= 18)."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError(
            "node was not found on PATH: install Node.js >= 18 (Debian: apt-get install nodejs)."
        )
    return node


def node_environment(node_modules):
    """The environment for a Node script that drives Chromium."""
    return dict(os.environ, **{NODE_MODULES_ENV: node_modules, CHROMIUM_ENV: find_chromium()})
