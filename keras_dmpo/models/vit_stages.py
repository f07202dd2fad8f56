"""Split a keras-hub ViT into early-exit stages.

A keras-hub ``ViTBackbone`` has three top-level layers: the input,
``vit_patching_and_embedding`` and ``vit_encoder``. The encoder keeps its blocks
in the list ``encoder_layers`` (their names changed across keras-hub releases,
so blocks are always addressed by index), plus a ``dropout`` applied before the
first block and a final LayerNorm ``layer_norm`` after the last one. Calling
those layers one by one in a new functional graph reuses the backbone's weights
and reproduces its output exactly, while exposing the tokens after any block.
"""

import numbers
import os

import keras


def _vit_classes():
    # Imported lazily: ``import keras_hub`` costs several seconds (it imports TF).
    import keras_hub

    return keras_hub.models.ViTBackbone, keras_hub.models.ViTImageClassifier


def get_vit_backbone(model):
    """Return the keras-hub ``ViTBackbone`` of ``model``.

    Args:
        model: a ``keras_hub.models.ViTBackbone`` or a keras-hub ViT image
            classifier (its ``.backbone`` is used).

    Raises:
        ValueError: if ``model`` is neither.
    """
    vit_backbone_cls, vit_classifier_cls = _vit_classes()
    if isinstance(model, vit_classifier_cls):
        model = model.backbone
    if not isinstance(model, vit_backbone_cls):
        raise ValueError(
            "`backbone` must be a keras_hub.models.ViTBackbone or a keras-hub "
            f"ViT image classifier; got {type(model).__name__} ({model!r:.80})."
        )
    return model


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
        raise ValueError(
            f"`exits` must be a list of 1-based block numbers; got {exits!r}."
        )
    try:
        exits = list(exits)
    except TypeError:
        raise ValueError(
            f"`exits` must be a list of 1-based block numbers; got {exits!r}."
        ) from None
    if not exits:
        raise ValueError(
            "`exits` is empty; expected at least one 1-based block number in "
            f"[1, {num_layers}]."
        )
    for exit_block in exits:
        if isinstance(exit_block, bool) or not isinstance(
            exit_block, numbers.Integral
        ):
            raise ValueError(
                f"`exits` must contain integers; got {exit_block!r} in {exits}."
            )
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
        raise ValueError(
            f"`exits` must be in increasing order; got {exits} "
            f"(expected {sorted(exits)})."
        )
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
    """A keras-hub ViT cut into early-exit stages, sharing its weights.

    Stage ``k`` runs blocks ``exits[k-1] + 1 .. exits[k]`` (1-based); stage 1
    also runs the patch embedding and the encoder's input dropout. The final
    LayerNorm belongs to the last exit's predictor (``final_norm``), which is
    why the tokens of the last exit equal the backbone's output.

    Args:
        backbone: a ``keras_hub.models.ViTBackbone`` or a keras-hub ViT image
            classifier.
        exits: increasing 1-based block numbers. The last block
            (``num_layers``) is appended when missing: the last exit always
            answers. ``None`` gives ``default_exits(num_layers)``.

    Example:
    >>> backbone = keras_hub.models.ViTBackbone(
    ...     image_shape=(32, 32, 3), patch_size=8, num_layers=3, num_heads=2,
    ...     hidden_dim=32, mlp_dim=64)
    >>> stages = ViTStages(backbone, exits=[1, 2])
    >>> stages.exits
    (1, 2, 3)
    >>> tokens = stages.tokens_model(np.zeros((2, 32, 32, 3)))  # one per exit
    """

    def __init__(self, backbone, exits=None):
        self.backbone = get_vit_backbone(backbone)
        config = self.backbone.get_config()
        self.num_layers = int(config["num_layers"])
        self.hidden_dim = int(config["hidden_dim"])
        self.mlp_dim = int(config["mlp_dim"])
        self.num_heads = int(config["num_heads"])
        self.image_shape = tuple(config["image_shape"])
        patch = config["patch_size"]
        self.patch_size = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
        self.use_class_token = bool(config.get("use_class_token", True))
        if config.get("data_format", "channels_last") != "channels_last":
            raise ValueError(
                "Only channels_last ViT backbones are supported; got "
                f"data_format={config.get('data_format')!r}."
            )
        if not self.use_class_token:
            raise ValueError(
                "The exit predictors read the class token: the backbone must be "
                "built with use_class_token=True."
            )
        self.exits = (
            default_exits(self.num_layers)
            if exits is None
            else validate_exits(exits, self.num_layers)
        )
        self.embedding = self.backbone.get_layer("vit_patching_and_embedding")
        encoder = self.backbone.get_layer("vit_encoder")
        self.input_dropout = encoder.dropout
        self.blocks = list(encoder.encoder_layers)
        if len(self.blocks) != self.num_layers:
            raise ValueError(
                f"The backbone's encoder has {len(self.blocks)} blocks but its "
                f"config says num_layers={self.num_layers}."
            )
        self.final_norm = encoder.layer_norm
        self._tokens_model = None

    @property
    def grid_size(self):
        """Patches per side (height, width) of the token grid."""
        return (
            self.image_shape[0] // self.patch_size[0],
            self.image_shape[1] // self.patch_size[1],
        )

    @property
    def num_tokens(self):
        """Class token plus the patch grid."""
        return 1 + self.grid_size[0] * self.grid_size[1]

    @property
    def stage_blocks(self):
        """For every exit, the 0-based indices of the blocks of its stage."""
        bounds = (0,) + self.exits
        return [list(range(bounds[k], bounds[k + 1])) for k in range(len(self.exits))]

    def embed(self, images, training=None):
        """Patch embedding (with class and position tokens) and input dropout."""
        return self.input_dropout(self.embedding(images), training=training)

    def run_blocks(self, tokens, block_indices, block_fn=None, training=None):
        """Run the blocks with the given 0-based indices on ``tokens``.

        ``block_fn(index, block, tokens)``, when given, replaces the plain call
        ``block(tokens)`` (the DMPO classifier uses it to add trunk adapters).
        """
        for index in block_indices:
            block = self.blocks[index]
            if block_fn is None:
                tokens = block(tokens, training=training)
            else:
                tokens = block_fn(index, block, tokens)
        return tokens

    def exit_tokens(self, images, block_fn=None, training=None):
        """Tokens after each exit's last block (the last exit is normalised).

        Returns a list with one ``(batch, num_tokens, hidden_dim)`` tensor per
        exit; the last one goes through the final LayerNorm, so it equals the
        backbone's output.
        """
        tokens = self.embed(images, training=training)
        outputs = []
        for indices in self.stage_blocks:
            tokens = self.run_blocks(tokens, indices, block_fn, training)
            outputs.append(tokens)
        outputs[-1] = self.final_norm(outputs[-1])
        return outputs

    @property
    def tokens_model(self):
        """Functional ``keras.Model``: images -> tokens at every exit."""
        if self._tokens_model is None:
            images = keras.Input(shape=self.image_shape, name="images")
            outputs = self.exit_tokens(images)
            self._tokens_model = keras.Model(
                images,
                {f"exit_{k + 1}": t for k, t in enumerate(outputs)},
                name="vit_exit_tokens",
            )
        return self._tokens_model


def split_vit_stages(backbone, exits=None):
    """Split a keras-hub ViT into stages; see ``ViTStages``."""
    return ViTStages(backbone, exits)


def load_vit_backbone(preset):
    """Load a keras-hub ViT backbone from a preset name or a local directory.

    Args:
        preset: a keras-hub ViT preset name (downloaded when a network is
            there), a ``kaggle://`` / ``hf://`` handle, a local preset
            directory (``save_to_preset`` output, backbone or image classifier),
            or one of keras_dmpo's short names (``keras_dmpo.presets``).

    Raises:
        ValueError: for a missing directory, a directory without
            ``config.json``, an unknown preset name, or a preset that is not a ViT.
    """
    import keras_hub

    from keras_dmpo import preset_registry

    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(
            f"`preset` must be a preset name or a directory path; got {preset!r}."
        )
    preset = os.fspath(preset)
    preset = preset_registry.resolve(preset)
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
        known = set(keras_hub.models.ViTBackbone.presets) | set(
            keras_hub.models.ViTImageClassifier.presets
        )
        if preset not in known:
            raise ValueError(
                f"Unknown `preset` {preset!r}. Known: keras_dmpo short names "
                f"{sorted(preset_registry.PRESETS)}, keras-hub ViT presets "
                f"{sorted(known)}, a kaggle:// or hf:// handle, or a local "
                "preset directory."
            )
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"Could not load keras-hub preset {preset!r}: {error}"
        ) from error
    vit_backbone_cls, _ = _vit_classes()
    if not isinstance(backbone, vit_backbone_cls):
        raise ValueError(
            f"`preset` {preset!r} holds a {type(backbone).__name__}, not a "
            "ViTBackbone; keras_dmpo splits keras-hub ViTs only."
        )
    return backbone
