"""The keras-hub ViT families keras_dmpo can split into stages.

Each family is described once here: where its patch embedding, blocks and
final LayerNorm live, how one block is called, and how many special tokens
come before the patch grid. Everything downstream (stages, bypass, covariance
heads, FLOPs, stage graphs) reads the token layout from ``BackboneLayout``,
never from a constant.

Supported (keras-hub 0.32):

- ``ViTBackbone``: class token, then the grid; blocks in
  ``vit_encoder.encoder_layers``; ``vit_encoder.dropout`` before the first
  block; ``vit_encoder.layer_norm`` after the last.
- ``DeiTBackbone``: class and distillation tokens, then the grid; blocks in
  ``deit_encoder.encoder_layers`` (each returns ``(tokens, scores)``).
- ``DINOV2Backbone``: class token, optional register tokens, then the grid;
  LayerScale in every block; position embeddings interpolated once at build
  into a weight (no resize op reaches a graph); blocks in ``encoder.layers``;
  final ``layernorm``. ``apply_layernorm`` only changes keras-hub's pyramid
  outputs, which the stages do not use.
"""

import dataclasses


def _keras_hub_families():
    # Imported lazily: ``import keras_hub`` costs several seconds (it imports TF).
    import keras_hub

    models = keras_hub.models
    return {
        "vit": (models.ViTBackbone, getattr(models, "ViTImageClassifier", None)),
        "deit": (models.DeiTBackbone, getattr(models, "DeiTImageClassifier", None)),
        "dinov2": (models.DINOV2Backbone, None),
    }


SUPPORTED_BACKBONES = ("ViTBackbone", "DeiTBackbone", "DINOV2Backbone")


@dataclasses.dataclass(frozen=True)
class BackboneLayout:
    """Shape facts of a backbone that the stages, heads and FLOPs need.

    Attributes:
        family: ``"vit"``, ``"deit"`` or ``"dinov2"``.
        image_shape: ``(height, width, channels)``.
        patch_size: ``(ph, pw)``.
        num_layers, hidden_dim, mlp_dim, num_heads: the transformer's size.
        num_prefix_tokens: special tokens before the patch grid (class first).
        grid_shape: ``(rows, cols)`` of the patch grid.
        layer_scale: whether blocks scale their branches (DINOv2 LayerScale).
        attention_bias: whether the q/k/v/output projections have biases.
    """

    family: str
    image_shape: tuple
    patch_size: tuple
    num_layers: int
    hidden_dim: int
    mlp_dim: int
    num_heads: int
    num_prefix_tokens: int
    grid_shape: tuple
    layer_scale: bool = False
    attention_bias: bool = True

    @property
    def num_tokens(self):
        return self.num_prefix_tokens + self.grid_shape[0] * self.grid_shape[1]


def _pair(value):
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value), int(value))


def find_family(model):
    """``(family, backbone)`` for a supported backbone or image classifier.

    Raises:
        ValueError: naming the supported classes, for anything else.
    """
    for family, (backbone_cls, classifier_cls) in _keras_hub_families().items():
        if classifier_cls is not None and isinstance(model, classifier_cls):
            model = model.backbone
        if isinstance(model, backbone_cls):
            return family, model
    raise ValueError(
        "`backbone` must be one of the keras-hub backbones "
        f"{', '.join(SUPPORTED_BACKBONES)} (or a keras-hub ViT/DeiT image "
        f"classifier); got {type(model).__name__} ({model!r:.80})."
    )


def _check_channels_last(config):
    if config.get("data_format", "channels_last") not in (None, "channels_last"):
        raise ValueError(
            f"Only channels_last backbones are supported; got data_format={config.get('data_format')!r}."
        )


# ViT and DeiT share keras-hub's encoder layout (``<family>_encoder`` with
# ``encoder_layers`` and ``layer_norm``, ``<family>_patching_and_embedding``);
# what differs is here. DINOv2 has a layout of its own (see ``describe``).
ENCODER_FAMILIES = {
    "vit": {
        "mlp_key": "mlp_dim",
        "num_prefix_tokens": 1,
        "encoder_dropout": True,
        "block_returns_tuple": False,
    },
    # Class + distillation tokens; the dropout sits inside the embedding layer;
    # a block returns (tokens, attention scores).
    "deit": {
        "mlp_key": "intermediate_dim",
        "num_prefix_tokens": 2,
        "encoder_dropout": False,
        "block_returns_tuple": True,
    },
}


def describe(backbone):
    """Return ``(BackboneLayout, BackboneParts)`` of a supported backbone."""
    family, backbone = find_family(backbone)
    config = backbone.get_config()
    _check_channels_last(config)
    image_shape = tuple(int(v) for v in config["image_shape"])
    patch_size = _pair(config["patch_size"])
    grid = (image_shape[0] // patch_size[0], image_shape[1] // patch_size[1])
    common = dict(
        family=family,
        image_shape=image_shape,
        patch_size=patch_size,
        num_layers=int(config["num_layers"]),
        hidden_dim=int(config["hidden_dim"]),
        num_heads=int(config["num_heads"]),
        grid_shape=grid,
    )
    if family in ENCODER_FAMILIES:
        spec = ENCODER_FAMILIES[family]
        if family == "vit" and not config.get("use_class_token", True):
            raise ValueError(
                "The exit predictors read the class token: the ViT backbone "
                "must be built with use_class_token=True."
            )
        layout = BackboneLayout(
            mlp_dim=int(config[spec["mlp_key"]]),
            num_prefix_tokens=spec["num_prefix_tokens"],
            attention_bias=bool(config.get("use_mha_bias", True)),
            **common,
        )
        encoder = backbone.get_layer(f"{family}_encoder")
        parts = BackboneParts(
            backbone=backbone,
            embedding=backbone.get_layer(f"{family}_patching_and_embedding"),
            input_dropout=encoder.dropout if spec["encoder_dropout"] else None,
            blocks=list(encoder.encoder_layers),
            final_norm=encoder.layer_norm,
            block_returns_tuple=spec["block_returns_tuple"],
        )
    else:
        if config.get("use_swiglu_ffn"):
            raise ValueError(
                "DINOV2Backbone with use_swiglu_ffn=True (the giant variant) is "
                "not supported yet: its FLOPs and stage graphs are untested. "
                "Use a DINOv2 backbone with the GELU MLP (small, base, large)."
            )
        layout = BackboneLayout(
            mlp_dim=int(config["intermediate_dim"]),
            num_prefix_tokens=1 + int(config.get("num_register_tokens", 0)),
            layer_scale=True,
            **common,
        )
        parts = BackboneParts(
            backbone=backbone,
            embedding=backbone.embeddings,  # includes its dropout
            input_dropout=None,
            blocks=list(backbone.encoder.layers),
            final_norm=backbone.layernorm,
            block_returns_tuple=False,
        )
    if len(parts.blocks) != layout.num_layers:
        raise ValueError(
            f"The backbone has {len(parts.blocks)} blocks but its config says num_layers={layout.num_layers}."
        )
    return layout, parts


@dataclasses.dataclass
class BackboneParts:
    """The layers of a backbone that the stages call, in order."""

    backbone: object
    embedding: object
    input_dropout: object
    blocks: list
    final_norm: object
    block_returns_tuple: bool

    def embed(self, images, training=None):
        tokens = self.embedding(images)
        if self.input_dropout is not None:
            tokens = self.input_dropout(tokens, training=training)
        return tokens

    def call_block(self, index, tokens, training=None):
        block = self.blocks[index]
        if self.block_returns_tuple:
            return _deit_block(block, tokens)
        return block(tokens, training=training)


def _deit_block(block, tokens):
    """The tokens of a ``DeiTEncoderBlock``.

    The block returns ``(tokens, None)`` unless asked for its attention
    scores, and a functional graph cannot hold a None output; calling its
    sublayers one by one is no way out either (they share names across
    blocks). The scores are computed inside attention anyway, so asking for
    them costs nothing extra, and the unused output is pruned from graphs.
    """
    return block(tokens, return_attention_scores=True)[0]


def recomputed_on_load(backbone):
    """``{name: variable}`` whose saved values keras-hub does not load back.

    keras-hub's DINOv2 recomputes its interpolated position embeddings from
    the 518-px grid when a model is loaded, with the loading backend's
    bicubic resize. Across backends that changes them (torch vs TensorFlow:
    up to 3e-3 in the exit probabilities of a tiny model), so whoever moves
    a model between backends (the TFLite export subprocess) carries these
    values over exactly.
    """
    family, backbone = find_family(backbone)
    if family == "dinov2":
        embeddings = backbone.embeddings
        return {"embeddings.interpolated_position_embeddings": embeddings.interpolated_position_embeddings}
    return {}
