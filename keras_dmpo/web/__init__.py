"""An early-exit export bundle in a web browser, with LiteRT.js.

``keras-dmpo web BUNDLE_DIR`` serves a page that runs a ``web=True`` export
(batch-1 stage graphs) in the browser: ``js/`` is the JavaScript runtime
(the npm package ``keras-dmpo-web``: manifest checks, the exit rule,
preprocessing and ``StagedRuntime`` on LiteRT.js), ``page/`` the demo page,
``server`` the local HTTP server, ``npm_deps`` the one-time install of
LiteRT.js from the lockfile, ``bundle_check`` the Python-side check of a
bundle before it is served, and ``browser`` / ``screenshot`` headless
Chromium for the tests and the docs' screenshot. docs/web.md has the details.
"""

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
JS_DIR = os.path.join(PACKAGE_DIR, "js")
PAGE_DIR = os.path.join(PACKAGE_DIR, "page")
