"""Split a keras-hub ViT-family backbone into early-exit stages.

The backbone's own layers (patch embedding, blocks, final LayerNorm; see
``backbone_families``) are called one by one in a new functional graph: the
graph reuses the backbone's weights and reproduces its output exactly, while
exposing the tokens after any block. Blocks are addressed by index, never by
name (their names changed across keras-hub releases).
"""

import numbers
import os

from keras_dmpo import preset_catalog
from keras_dmpo.models.backbone_families import describe, find_family
from keras_dmpo.models.stage_models import exit_features_model
from keras_dmpo.models.stage_plan import StagePlan


def get_vit_backbone(model):
    """Return the supported keras-hub backbone of ``model``.

    Args:
        model: a keras-hub ``ViTBackbone``, ``DeiTBackbone`` or
            ``DINOV2Backbone``, or a keras-hub ViT/DeiT image classifier (its
            ``.backbone`` is used).

    Raises:
        ValueError: for anything else, listing the supported classes.
    """
    return find_family(model)[1]


def validate_exits(exits, num_layers, add_last=True):
    """Check 1-based exit block numbers and return them as a tuple.

    Args:
        exits: increasing block numbers in ``[1, num_layers]``.
        num_layers: the backbone's number of blocks.
        add_last: if True, ``num_layers`` is appended when missing, so the last
            block always has an exit (the one that always answers).

    Raises:
        ValueError: for an empty, unsorted or repeated list, a non-integer, or
            a number outside ``[1, num_layers]``.
    """
    if exits is None or isinstance(exits, (str, bytes)):
        raise ValueError(f"`exits` must be a list of 1-based block numbers; got {exits!r}.")
    try:
        exits = list(exits)
    except TypeError:
        raise ValueError(f"`exits` must be a list of 1-based block numbers; got {exits!r}.") from None
    if not exits:
        raise ValueError(
            f"`exits` is empty; expected at least one 1-based block number in [1, {num_layers}]."
        )
    for exit_block in exits:
        if isinstance(exit_block, bool) or not isinstance(exit_block, numbers.Integral):
            raise ValueError(f"`exits` must contain integers; got {exit_block!r} in {exits}.")
    exits = [int(e) for e in exits]
    for exit_block in exits:
        if exit_block < 1 or exit_block > num_layers:
            raise ValueError(
                f"`exits` contains {exit_block}, outside [1, {num_layers}]: exits "
                f"are 1-based block numbers of a backbone with {num_layers} "
                f"blocks. Got exits={exits}."
            )
    if len(set(exits)) != len(exits):
        raise ValueError(f"`exits` has repeated block numbers: {exits}.")
    if exits != sorted(exits):
        raise ValueError(f"`exits` must be in increasing order; got {exits} (expected {sorted(exits)}).")
    if add_last and exits[-1] != num_layers:
        exits.append(num_layers)
    return tuple(exits)


def default_exits(num_layers):
    """Default exits: every block up to 8 blocks, else ~8 evenly spaced ones.

    The last block is always included. For deep backbones the first exit sits
    at ``num_layers // 8`` blocks, about 12% of the full model's cost, so
    25-30% FLOPs budgets are reachable.
    """
    if num_layers <= 8:
        return tuple(range(1, num_layers + 1))
    exits = sorted({max(1, round(num_layers * k / 8)) for k in range(1, 9)})
    return validate_exits(exits, num_layers)


class ViTStages:
    """A keras-hub ViT-family backbone cut into early-exit stages, sharing its weights.

    Stage ``k`` runs blocks ``exits[k-1] + 1 .. exits[k]`` (1-based); stage 1
    also runs the patch embedding (with the class, distillation or register
    tokens and the position embeddings) and the input dropout. The final
    LayerNorm belongs to the last exit's predictor (``final_norm``), which is
    why the tokens of the last exit equal the backbone's output.

    Args:
        backbone: a keras-hub ``ViTBackbone``, ``DeiTBackbone`` or
            ``DINOV2Backbone`` (or a ViT/DeiT image classifier).
        exits: increasing 1-based block numbers. The last block
            (``num_layers``) is appended when missing: the last exit always
            answers. ``None`` gives ``default_exits(num_layers)``.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.ViTBackbone(
    ...     image_shape=(32, 32, 3), patch_size=8, num_layers=3, num_heads=2,
    ...     hidden_dim=32, mlp_dim=64)
    >>> stages = ViTStages(backbone, exits=[1, 2])
    >>> stages.exits
    (1, 2, 3)
    >>> tokens = stages.tokens_model(np.zeros((2, 32, 32, 3)))  # one per exit
    >>> {name: tuple(value.shape) for name, value in tokens.items()}
    {'exit_1': (2, 17, 32), 'exit_2': (2, 17, 32), 'exit_3': (2, 17, 32)}
    """

    def __init__(self, backbone, exits=None):
        self.layout, self._parts = describe(backbone)
        layout = self.layout
        self.backbone = self._parts.backbone
        self.family = layout.family
        self.num_layers = layout.num_layers
        self.hidden_dim = layout.hidden_dim
        self.mlp_dim = layout.mlp_dim
        self.num_heads = layout.num_heads
        self.image_shape = layout.image_shape
        self.patch_size = layout.patch_size
        self.num_prefix_tokens = layout.num_prefix_tokens
        self.grid_shape = layout.grid_shape
        self.exits = (
            default_exits(self.num_layers) if exits is None else validate_exits(exits, self.num_layers)
        )
        self.blocks = self._parts.blocks
        self.final_norm = self._parts.final_norm
        self._tokens_model = None

    @property
    def num_tokens(self):
        """Prefix tokens (class first) plus the patch grid."""
        return self.layout.num_tokens

    @property
    def stage_blocks(self):
        """For every exit, the 0-based indices of the blocks of its stage."""
        bounds = (0,) + self.exits
        return [list(range(bounds[k], bounds[k + 1])) for k in range(len(self.exits))]

    def embed(self, images, training=None):
        """Patch embedding (with prefix and position tokens) and input dropout."""
        return self._parts.embed(images, training=training)

    def call_block(self, index, tokens, training=None):
        """Block ``index`` (0-based) on ``tokens``, whatever its family's call."""
        return self._parts.call_block(index, tokens, training)

    def run_blocks(self, tokens, block_indices, training=None):
        """Run the plain blocks with the given 0-based indices on ``tokens``."""
        for index in block_indices:
            tokens = self._parts.call_block(index, tokens, training)
        return tokens

    @property
    def tokens_model(self):
        """Functional ``keras.Model``: images -> ``{"exit_k": tokens}`` after
        every exit's block, the last ones through the final LayerNorm (so
        they equal the backbone's output). A ``StagePlan`` without heads."""
        if self._tokens_model is None:
            self._tokens_model = exit_features_model(StagePlan(self), name="vit_exit_tokens")
        return self._tokens_model


def _known_preset_names():
    import keras_hub

    models = keras_hub.models
    names = set()
    for cls_name in (
        "ViTBackbone",
        "ViTImageClassifier",
        "DeiTBackbone",
        "DeiTImageClassifier",
        "DINOV2Backbone",
    ):
        names |= set(getattr(getattr(models, cls_name, None), "presets", {}) or {})
    return names


def load_vit_backbone(preset, image_shape=None):
    """Load a supported keras-hub backbone from a preset name or a local directory.

    Args:
        preset: a keras-hub ViT, DeiT or DINOv2 preset name (downloaded when a
            network is there), a ``kaggle://`` / ``hf://`` handle, a local
            preset directory (``save_to_preset`` output, or a Hugging Face
            Dinov2 folder), or one of keras_dmpo's short names
            (``keras_dmpo.presets``).
        image_shape: ``(S, S, 3)`` to build the backbone at another input
            size. DINOv2 interpolates its position embeddings (once, at
            build); ViT and DeiT presets keep the size they were saved with.

    Raises:
        ValueError: for a missing directory, a directory without
            ``config.json``, an unknown preset name, a short name not fetched
            yet, or a preset that is not a supported backbone.
    """
    import keras_hub

    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(f"`preset` must be a preset name or a directory path; got {preset!r}.")
    preset = os.fspath(preset)
    preset = preset_catalog.resolve(preset)
    looks_like_path = (
        os.sep in preset or preset.startswith(".") or os.path.exists(preset)
    ) and "://" not in preset
    if looks_like_path:
        if not os.path.isdir(preset):
            raise ValueError(
                f"`preset` directory {preset!r} does not exist (expected a "
                "directory written by keras-hub's save_to_preset)."
            )
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise ValueError(
                f"`preset` directory {preset!r} has no config.json; it is not a "
                "keras-hub preset (expected the output of save_to_preset)."
            )
    elif "://" not in preset:
        known = _known_preset_names()
        if preset not in known:
            raise ValueError(
                f"Unknown `preset` {preset!r}. Known: keras_dmpo short names "
                f"{sorted(preset_catalog.PRESETS)}, keras-hub ViT/DeiT/DINOv2 "
                f"presets {sorted(known)}, a kaggle:// or hf:// handle, or a "
                "local preset directory."
            )
    kwargs = {}
    if image_shape is not None:
        image_shape = tuple(int(v) for v in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"`image_shape` must be (height, width, channels); got {image_shape!r}.")
        kwargs["image_shape"] = image_shape
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, **kwargs)
    except ModuleNotFoundError as error:
        raise ValueError(
            f"Could not load preset {preset!r}: missing module {error.name!r} "
            "(keras-hub's Hugging Face loader needs `safetensors`; "
            "pip install keras-dmpo installs it)."
        ) from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"Could not load keras-hub preset {preset!r}"
            + (f" at image_shape={image_shape}" if image_shape else "")
            + f": {error}"
        ) from error
    family, backbone = find_family(backbone)
    if image_shape is not None and tuple(backbone.get_config()["image_shape"]) != image_shape:
        raise ValueError(
            f"`image_shape`={image_shape} is not supported by the {family} preset "
            f"{preset!r} (built at {tuple(backbone.get_config()['image_shape'])}); "
            "only DINOv2 interpolates its position embeddings to a new size."
        )
    if family == "dinov2":
        backbone = with_position_embeddings_at_image_size(backbone)
    return backbone


def with_position_embeddings_at_image_size(backbone):
    """A DINOv2 backbone that stores its position embeddings at its own grid.

    keras-hub keeps a DINOv2 preset's position grid (37 x 37 for 518 px) and
    interpolates it to the image size every time the backbone is built or
    loaded, with the loading backend's bicubic resize. PyTorch's bicubic is
    not TensorFlow's or JAX's (0.22 apart on unit-normal embeddings, 37 -> 8):
    a model tuned on torch changed when TensorFlow loaded it for export.
    Stored at the image's grid (the embeddings this backend interpolated, as
    the model was built), it loads the same on every backend.

    Returns ``backbone`` itself when its grid is already the image's.
    """
    config = backbone.get_config()
    image_shape = tuple(config["image_shape"])
    if tuple(config["position_embedding_shape"]) == image_shape:
        return backbone
    changes = {"position_embedding_shape": image_shape}
    if backbone.embeddings.name == "embeddings":
        # Built without a name (the Hugging Face loader): keras-hub prefixes
        # its layers with a given name, so keep none and the same layer names.
        changes["name"] = None
    baked = type(backbone).from_config({**config, **changes})
    import keras

    # numpy copies: on JAX two variables assigned one array share its buffer,
    # and a jitted train step that donates both fails.
    embeddings = keras.ops.convert_to_numpy(backbone.embeddings.interpolated_position_embeddings)
    for target, source in zip(baked.weights, backbone.weights, strict=True):
        if source.path.endswith("embeddings/position_embeddings"):
            target.assign(embeddings.copy())
        elif target.name != source.name or tuple(target.shape) != tuple(source.shape):
            raise ValueError(  # a keras-hub whose DINOv2 builds its weights in another order
                f"cannot store the position embeddings at the image grid: weight {source.path} "
                f"{tuple(source.shape)} has no counterpart ({target.path} {tuple(target.shape)})."
            )
        else:
            target.assign(keras.ops.convert_to_numpy(source).copy())
    return baked
