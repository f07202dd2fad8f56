"""keras_dmpo.web's server, bundle check, npm install and CLI, without a browser."""

import http.client
import json
import os
import shutil
import socket
import subprocess

import keras
import pytest
import web_checks
from export_checks import float_export, load_manifest

from keras_dmpo import cli
from keras_dmpo.web import npm_deps, server
from keras_dmpo.web.bundle_check import DYNAMIC_BATCH_MESSAGE, check_web_bundle

# One backend is enough: the server and the checks are plain Python, and the
# web bundle is exported once (in-process on TensorFlow).
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="web tests run under KERAS_BACKEND=tensorflow only"
)


@pytest.fixture(scope="module")
def web_bundle(tmp_path_factory):
    directory, _ = float_export(tmp_path_factory, web=True)
    return directory


def _copy(bundle, tmp_path, name="bundle", edit=None):
    target = tmp_path / name
    shutil.copytree(bundle, target)
    if edit is not None:
        manifest = load_manifest(target)
        edit(manifest)
        (target / "manifest.json").write_text(json.dumps(manifest))
    return str(target)


def make_dynamic(manifest):
    """The web manifest as a dynamic-batch one (a valid manifest for StagedRuntime)."""
    for entry in manifest["stages"] + [manifest["monolithic"]]:
        for spec in entry["inputs"] + entry["outputs"]:
            spec["shape"][0] = -1


@pytest.fixture
def fake_modules(tmp_path):
    """A node_modules folder with the two files the vendor routes are tested on."""
    modules = tmp_path / "node_modules"
    wasm = modules / "@litertjs" / "core" / "wasm"
    wasm.mkdir(parents=True)
    (wasm / "litert.wasm").write_bytes(b"\0asm\1\0\0\0")
    other = modules / "puppeteer-core"
    other.mkdir()
    (other / "package.json").write_text("{}")
    return str(modules)


@pytest.fixture
def running(web_bundle, tmp_path, fake_modules):
    """A server (isolation on) over a copy of the bundle with a symlink out and a hidden file."""
    bundle = _copy(web_bundle, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the bundle")
    os.symlink(secret, os.path.join(bundle, "leak.txt"))
    os.symlink(os.path.join(bundle, "stage_1.tflite"), os.path.join(bundle, "alias.tflite"))
    with open(os.path.join(bundle, ".hidden"), "w") as handle:
        handle.write("no")
    with web_checks.serving(bundle, fake_modules) as url:
        yield url


def _get(url, path, method="GET", host_header=None):
    host, port = url.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    # The raw path, not normalised.
    connection.putrequest(method, path, skip_host=host_header is not None, skip_accept_encoding=True)
    if host_header is not None:
        connection.putheader("Host", host_header)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


def test_routes_and_types(running):
    status, headers, body = _get(running, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"importmap" in body
    for path, kind in [
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/runtime/src/index.js", "text/javascript"),
        ("/runtime/index.d.ts", "text/plain"),
        ("/vendor/@litertjs/core/wasm/litert.wasm", "application/wasm"),
        ("/bundle/manifest.json", "application/json"),
        ("/bundle/stage_1.tflite", "application/octet-stream"),
        ("/bundle/alias.tflite", "application/octet-stream"),  # a symlink inside the bundle
    ]:
        status, headers, _ = _get(running, path)
        assert (status, headers["Content-Type"].split(";")[0]) == (200, kind), path
    status, headers, body = _get(running, "/bundle/stage_1.tflite", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_a_bundle_without_samples_has_an_empty_sample_index(running, web_bundle, tmp_path, fake_modules):
    # The fixture's bundle has no samples/: an empty index, not a 404 the browser would log.
    status, _, body = _get(running, "/bundle/samples/index.json")
    assert status == 200 and json.loads(body) == {"images": []}
    # With samples/ the bundle's own index is served, and nothing else stands in for a missing file.
    bundle = _copy(web_bundle, tmp_path, name="with_samples")
    os.makedirs(os.path.join(bundle, "samples"))
    with web_checks.serving(bundle, fake_modules) as url:
        assert _get(url, "/bundle/samples/index.json")[0] == 404
        with open(os.path.join(bundle, "samples", "index.json"), "w") as handle:
            json.dump({"images": [{"file": "0000.png", "label": None, "label_name": None}]}, handle)
        status, _, body = _get(url, "/bundle/samples/index.json")
        assert status == 200 and len(json.loads(body)["images"]) == 1
        assert _get(url, "/bundle/samples/no_samples.json")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/bundle/",
        "/bundle",
        "/bundle/../keras_dmpo/web/server.py",
        "/bundle/%2e%2e/secret.txt",
        "/bundle/..%2fsecret.txt",
        "/bundle/leak.txt",  # a symlink that leaves the bundle
        "/bundle/.hidden",
        "/bundle/missing.tflite",
        "/bundle//etc/passwd",
        "/bundle/%00",
        "/runtime/node_modules/@litertjs/core/package.json",
        "/runtime/",
        "/vendor/puppeteer-core/package.json",
        "/vendor/@litertjs/",
        "/etc/passwd",
        "/../../etc/passwd",
        "/%ff",
    ],
)
def test_refused_paths(running, path):
    status, _, body = _get(running, path)
    assert status == 404, (path, body)


def test_only_its_own_host_names_are_answered(running):
    port = running.rstrip("/").rsplit(":", 1)[1]
    for name in ("127.0.0.1", "localhost", "LOCALHOST"):
        assert _get(running, "/bundle/manifest.json", host_header=f"{name}:{port}")[0] == 200
    # A page whose DNS name was rebound to 127.0.0.1 sends its own name.
    for name in (f"evil.example:{port}", "evil.example", "127.0.0.1", ""):
        assert _get(running, "/bundle/manifest.json", host_header=name)[0] == 421, name


def test_isolation_headers(web_bundle, fake_modules):
    status, headers, _ = _get_once(web_bundle, fake_modules, isolation=True)
    assert status == 200
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    status, headers, _ = _get_once(web_bundle, fake_modules, isolation=False)
    assert status == 200 and "Cross-Origin-Opener-Policy" not in headers
    assert "Cross-Origin-Embedder-Policy" not in headers


def _get_once(bundle, modules, isolation):
    with web_checks.serving(bundle, modules, isolation=isolation) as url:
        return _get(url, "/bundle/manifest.json")


def test_bundle_check(web_bundle, tmp_path):
    assert check_web_bundle(web_bundle)["stages"][0]["inputs"][0]["shape"][0] == 1
    dynamic = _copy(web_bundle, tmp_path, "dynamic", make_dynamic)
    with pytest.raises(ValueError, match="LiteRT.js needs batch-1 graphs") as error:
        check_web_bundle(dynamic)
    assert str(error.value).endswith(f"{DYNAMIC_BATCH_MESSAGE}.")

    def bad_name(manifest):
        manifest["stages"][1]["file"] = "../stage_2.tflite"

    with pytest.raises(ValueError, match=r"manifest\['stages'\]\[1\]\['file'\] must be a plain file name"):
        check_web_bundle(_copy(web_bundle, tmp_path, "bad_name", bad_name))

    def bad_hash(manifest):
        manifest["stages"][0]["sha256"] = "0" * 64

    with pytest.raises(ValueError, match="sha256 mismatch for 'stage_1.tflite'"):
        check_web_bundle(_copy(web_bundle, tmp_path, "bad_hash", bad_hash))


def test_js_and_python_refuse_dynamic_batch_in_the_same_words():
    node, _ = web_checks.tools()
    manifest_js = os.path.join(web_checks.JS_DIR, "src", "manifest.js")
    code = f"import({json.dumps(manifest_js)}).then((m) => console.log(m.DYNAMIC_BATCH_MESSAGE))"
    result = subprocess.run([node, "-e", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == DYNAMIC_BATCH_MESSAGE


def test_cli_refuses_a_dynamic_bundle(web_bundle, tmp_path, capsys):
    assert "web" in cli.build_parser().parse_args(["web", web_bundle]).command
    dynamic = _copy(web_bundle, tmp_path, "dynamic", make_dynamic)
    assert cli.main(["web", dynamic, "--port", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("keras-dmpo web: error: ") and DYNAMIC_BATCH_MESSAGE in error
    assert len(error.splitlines()) == 1
    assert cli.main(["web", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_arguments(web_bundle, fake_modules):
    with pytest.raises(ValueError, match=r"`port` must be an integer in \[0, 65535\].*got 70000"):
        server.make_server(web_bundle, port=70000, node_modules=fake_modules)
    with pytest.raises(ValueError, match="`host`"):
        server.make_server(web_bundle, host="", node_modules=fake_modules)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            server.make_server(web_bundle, port=port, node_modules=fake_modules)


def test_npm_missing_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv(npm_deps.NODE_MODULES_ENV, raising=False)
    with pytest.raises(RuntimeError) as error:
        npm_deps.ensure_node_modules()
    message = str(error.value)
    assert message.startswith("npm was not found on PATH") and "\n" not in message
    assert not os.path.exists(os.path.join(npm_deps.cache_root(), npm_deps.lockfile_key()))


def test_npm_cache_is_keyed_by_the_lockfile(monkeypatch, tmp_path):
    assert npm_deps.lockfile_key(dev=True) == npm_deps.lockfile_key() + "-dev"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    root = npm_deps.cache_root()
    assert root.startswith(str(tmp_path)) and "site-packages" not in root
    # A complete install (the renamed staging directory) is reused, not redone.
    done = os.path.join(root, npm_deps.lockfile_key(), "node_modules")
    os.makedirs(done)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert npm_deps.ensure_node_modules() == done
