"""``keras-dmpo web``: serve the demo page, the JS runtime, LiteRT.js and one bundle.

URL layout (GET and HEAD only; anything else is 404 or 405):

- ``/`` and the page's files (``index.html``, ``app.js``, ``style.css``);
- ``/runtime/...``: the ``keras-dmpo-web`` package folder (``src/``,
  ``index.d.ts``, ``package.json``);
- ``/vendor/...``: the locked ``@litertjs/core`` and ``@litertjs/wasm-utils``
  (``npm_deps.ensure_node_modules``), wasm as ``application/wasm``;
- ``/bundle/...``: the bundle directory.

Every path resolves to a regular file inside its root or is 404: no
directory listing, no ``..``, no hidden names, no symlink that leaves the
root. On a loopback address, a request whose ``Host`` header is not one of
the server's own names is refused (421): a web page that points its DNS
name at 127.0.0.1 cannot read what is served. With isolation (the default) every response carries
``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp``, which make the page
cross-origin isolated, so SharedArrayBuffer and LiteRT.js's threaded wasm
work; without them LiteRT.js runs single-threaded.
"""

import http.server
import ipaddress
import os
import shutil
import socket
import urllib.parse

from keras_dmpo.web import JS_DIR, PAGE_DIR
from keras_dmpo.web.bundle_check import check_web_bundle
from keras_dmpo.web.npm_deps import ensure_node_modules

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".ts": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
# What /bundle/samples/index.json is for a bundle exported without samples:
# an empty list from the page's folder, so that the page shows no grid
# rather than a 404 in the browser's console.
SAMPLES_INDEX = "samples/index.json"
NO_SAMPLES = "no_samples.json"
# The only packages /vendor/ serves: the runtime's dependency and its own.
VENDOR_PACKAGES = ("@litertjs/core", "@litertjs/wasm-utils")


def resolve_inside(root, relative):
    """The real path of ``relative`` (a decoded URL path below ``root``) if
    it is a regular file inside ``root``, else None.

    Refused: empty, ``.`` or ``..`` segments, hidden names (a killed
    writer's ``.partial`` debris), backslashes or NUL, and anything whose
    real path (symlinks followed) leaves ``root``.
    """
    parts = relative.split("/")
    for part in parts:
        if not part or part in (".", "..") or part.startswith(".") or "\\" in part or "\x00" in part:
            return None
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, real]) != real_root or not os.path.isfile(real):
        return None
    return real


class WebRoutes:
    """Which folder serves each URL prefix."""

    def __init__(self, bundle_dir, node_modules, page_dir=PAGE_DIR, js_dir=JS_DIR):
        self.bundle_dir = os.path.abspath(os.fspath(bundle_dir))
        self.node_modules = node_modules
        self.page_dir = page_dir
        self.js_dir = js_dir

    def resolve(self, path):
        """The file for a decoded URL path (starting with ``/``), or None."""
        if path in ("/", "/index.html"):
            return resolve_inside(self.page_dir, "index.html")
        prefix, _, rest = path[1:].partition("/")
        if prefix == "bundle":
            found = resolve_inside(self.bundle_dir, rest)
            if (
                found is None
                and rest == SAMPLES_INDEX
                and not os.path.lexists(os.path.join(self.bundle_dir, "samples"))
            ):
                return resolve_inside(self.page_dir, NO_SAMPLES)
            return found
        if prefix == "runtime":
            if rest.split("/")[0] == "node_modules":
                return None
            return resolve_inside(self.js_dir, rest)
        if prefix == "vendor":
            if not any(rest.startswith(package + "/") for package in VENDOR_PACKAGES):
                return None
            return resolve_inside(self.node_modules, rest)
        if "/" not in path[1:]:
            return resolve_inside(self.page_dir, path[1:])
        return None


class WebRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes``; quiet except for refused requests."""

    server_version = "keras-dmpo-web"

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    def _refuse(self, code, message):
        payload = f"{code} {message}\n".encode()
        self.send_response(code)
        self._common_headers()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _common_headers(self):
        if self.server.isolation:
            for name, value in ISOLATION_HEADERS.items():
                self.send_header(name, value)
        self.send_header("X-Content-Type-Options", "nosniff")
        # A re-export replaces the bundle in place: never serve a stale copy.
        self.send_header("Cache-Control", "no-cache")

    def _serve(self, body):
        allowed = self.server.allowed_hosts
        if allowed is not None and self.headers.get("Host", "").lower() not in allowed:
            # A loopback server answers only to its own names: a web page that
            # rebinds its DNS name to 127.0.0.1 cannot read the bundle.
            return self._refuse(421, "Misdirected Request")
        raw_path = urllib.parse.urlsplit(self.path).path
        try:
            path = urllib.parse.unquote(raw_path, errors="strict")
        except UnicodeDecodeError:
            return self._refuse(404, "Not Found")
        real = self.server.routes.resolve(path)
        if real is None:
            return self._refuse(404, "Not Found")
        try:
            handle = open(real, "rb")
        except OSError:
            return self._refuse(404, "Not Found")
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(200)
            self._common_headers()
            extension = os.path.splitext(real)[1].lower()
            self.send_header("Content-Type", CONTENT_TYPES.get(extension, "application/octet-stream"))
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if body:
                try:
                    shutil.copyfileobj(handle, self.wfile, 1 << 20)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the browser went away mid-file

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    def log_request(self, code="-", size="-"):
        if self.server.verbose or (isinstance(code, int) and code >= 400):
            super().log_request(code, size)


class WebServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server for one bundle (``make_server``)."""

    daemon_threads = True

    def __init__(self, address, routes, isolation=True, verbose=False):
        self.routes = routes
        self.isolation = isolation
        self.verbose = verbose
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, WebRequestHandler)
        port = self.server_address[1]
        # On loopback, the Host header must be one of this server's names;
        # elsewhere (--host 0.0.0.0) any name that reaches it is meant to.
        self.allowed_hosts = (
            {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", host.lower())}
            if is_loopback(host)
            else None
        )

    @property
    def url(self):
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


def check_port(port):
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"`port` must be an integer in [0, 65535] (0: any free port); got {port!r}.")
    return port


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(
    bundle_dir,
    host="127.0.0.1",
    port=8000,
    isolation=True,
    check_bundle=True,
    node_modules=None,
    verbose=False,
):
    """A ``WebServer`` for ``bundle_dir``, bound and ready (call ``serve_forever``).

    Args:
        bundle_dir: a ``web=True`` export (``keras-dmpo export --web``).
        host: the address to listen on; 127.0.0.1 (this machine only) by default.
        port: the port; 0 picks any free one (``server.url`` tells which).
        isolation: send the cross-origin isolation headers (threads in the browser).
        check_bundle: validate the bundle first (``check_web_bundle``); the
            tests turn it off to show the browser's own refusal.
        node_modules: where LiteRT.js is installed (default:
            ``ensure_node_modules()``, installing it on first use).
        verbose: log every request to stderr (default: refused ones only).
    """
    bundle_dir = os.fspath(bundle_dir)
    check_port(port)
    if not isinstance(host, str) or not host:
        raise ValueError(f"`host` must be a host name or address; got {host!r}.")
    if not os.path.isdir(bundle_dir):
        raise FileNotFoundError(f"Bundle directory {bundle_dir!r} does not exist (keras-dmpo export --web).")
    if check_bundle:
        check_web_bundle(bundle_dir)
    if node_modules is None:
        node_modules = ensure_node_modules()
    routes = WebRoutes(bundle_dir, node_modules)
    try:
        return WebServer((host, port), routes, isolation=isolation, verbose=verbose)
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot listen on {host}:{port}: {error.strerror} (is another server there? --port 0 "
            "picks a free port)",
        ) from None


def run_server(bundle_dir, host="127.0.0.1", port=8000, isolation=True):
    """``keras-dmpo web``: check the bundle, serve it and print the URL until Ctrl-C."""
    server = make_server(bundle_dir, host=host, port=port, isolation=isolation)
    print(f"Serving {os.path.abspath(bundle_dir)} at {server.url}", flush=True)
    if not isolation:
        print("Cross-origin isolation is off: LiteRT.js runs single-threaded.", flush=True)
    if not is_loopback(host):
        print(
            f"Listening on {host}, reachable from other machines. Browsers give Web Crypto (the "
            "sha256 checks) only to https:// or localhost pages, so open it through https or "
            "from this machine.",
            flush=True,
        )
    print("Press Ctrl-C to stop.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
