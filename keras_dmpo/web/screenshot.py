"""A screenshot of the demo page on a bundle, taken by headless Chromium.

    python -m keras_dmpo.web.screenshot BUNDLE_DIR OUT.png [--width 1200] [--height 900]

Serves the bundle on a free 127.0.0.1 port, opens the page, waits until the
sample images have run, and writes a full-page PNG (atomically: the file is
the whole screenshot or absent). Needs node, npm (puppeteer-core is
installed once from the lockfile) and Chromium.
"""

import argparse
import json
import os
import subprocess
import sys
import threading

from keras_dmpo import atomic_io
from keras_dmpo.web.browser import TOOLS_DIR, find_node, node_environment
from keras_dmpo.web.npm_deps import ensure_node_modules
from keras_dmpo.web.server import make_server

SCRIPT = os.path.join(TOOLS_DIR, "screenshot.mjs")
TIMEOUT_S = 300


def _check_size(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 8000:
        raise ValueError(f"`{name}` must be an integer number of pixels in [200, 8000]; got {value!r}.")
    return value


def take_screenshot(bundle_dir, out_png, width=1200, height=900, isolation=True):
    """Write the page on ``bundle_dir`` to ``out_png``; returns what the page
    reported (``ready``, ``errorPanel``, ``consoleErrors``, ...)."""
    _check_size(width, "width")
    _check_size(height, "height")
    out_png = os.fspath(out_png)
    if not out_png.lower().endswith(".png"):
        raise ValueError(f"`out_png` must name a .png file; got {out_png!r}.")
    node_modules = ensure_node_modules(dev=True)
    env = node_environment(node_modules)
    node = find_node()
    server = make_server(bundle_dir, port=0, isolation=isolation, node_modules=node_modules)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    temporary = atomic_io.partial_path(out_png, suffix=".png")
    try:
        command = [node, SCRIPT, server.url, temporary, str(width), str(height)]
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"The screenshot of {server.url} took over {TIMEOUT_S} s.") from None
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()[-3000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        atomic_io.replace_file(temporary, out_png)
    finally:
        atomic_io.remove_quietly(temporary)
        server.shutdown()
        server.server_close()
        thread.join()
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_dmpo.web.screenshot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("bundle_dir", metavar="BUNDLE_DIR")
    parser.add_argument("out_png", metavar="OUT.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--no-isolation", action="store_true", help="serve without COOP/COEP (one thread)")
    args = parser.parse_args(argv)
    try:
        report = take_screenshot(
            args.bundle_dir, args.out_png, args.width, args.height, isolation=not args.no_isolation
        )
    except (ValueError, OSError, RuntimeError) as error:
        print(f"screenshot: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_png}")
    problems = report["consoleErrors"] + report["pageErrors"] + report["failedRequests"]
    if not report["ready"]["ok"]:
        print(f"the page refused the bundle: {report['ready']['error']}", file=sys.stderr)
    for problem in problems:
        print(f"page problem: {problem}", file=sys.stderr)
    return 0 if report["ready"]["ok"] and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
