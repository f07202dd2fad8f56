"""The forward pass of an early-exit ViT, written once, stage by stage.

A ``StagePlan`` lists, for every exit, what its stage runs: the backbone
blocks since the previous exit with their trunk adapters, then the exit's
predictor (the backbone's final LayerNorm for the last exit, the bypass, the
head). The classifier's functional graph, the stage models of batched early
exit and of the exports, the single-exit "full model" and the FLOPs counter
all read this one description, so they cannot drift apart.
"""

import dataclasses

from keras import ops


@dataclasses.dataclass(frozen=True)
class Stage:
    """What stage ``index`` (0-based) runs. Stage 0 also runs the plan's
    ``embed``.

    Attributes:
        index: 0-based stage (and exit) number.
        exit_block: 1-based number of the block after which its exit reads.
        blocks: 0-based indices of the backbone blocks the stage runs.
        adapters: the trunk adapter of each of these blocks (a
            ``ParallelAdapter``: ``adapter(block_inputs, block_outputs)``),
            or ``()`` when the trunk is tuned otherwise (LoRA) or not at all.
        final_norm: the backbone's final LayerNorm, which only the last
            exit's predictor reads through; None for the other exits.
        bypass: the ``BypassAdapter`` between the trunk tokens and the head,
            or None. Only the predictor sees its output.
        head: the exit head (tokens -> logits), or None: the stage then
            outputs the features its head would read.
    """

    index: int
    exit_block: int
    blocks: tuple
    adapters: tuple = ()
    final_norm: object = None
    bypass: object = None
    head: object = None


class StagePlan:
    """A ``ViTStages`` split plus, per stage, the layers DMPO adds.

    Args:
        stages: a ``ViTStages`` (the backbone cut at the exits).
        trunk_adapters: one trunk adapter per backbone block, or empty.
        bypasses: one ``BypassAdapter`` or None per exit; None: no bypass.
        heads: one exit head per exit; None: no heads, the plan outputs
            every exit's features (the tokens after its block, the last
            ones through the final LayerNorm).
        normalization: ``(scale, offset)`` applied to the images as
            ``images * scale + offset`` before the patch embedding, or None.

    Example:

    >>> import keras, keras_hub
    >>> backbone = keras_hub.models.ViTBackbone(
    ...     image_shape=(32, 32, 3), patch_size=8, num_layers=3, num_heads=2,
    ...     hidden_dim=32, mlp_dim=64)
    >>> from keras_dmpo.models.vit_stages import ViTStages
    >>> plan = StagePlan(ViTStages(backbone, exits=[1]))
    >>> [stage.blocks for stage in plan.stages]
    [(0,), (1, 2)]
    >>> features = plan(np.zeros((2, 32, 32, 3), "float32"))  # one per exit
    >>> [tuple(f.shape) for f in features]
    [(2, 17, 32), (2, 17, 32)]
    """

    def __init__(self, stages, trunk_adapters=(), bypasses=None, heads=None, normalization=None):
        num_exits = len(stages.exits)
        trunk_adapters = tuple(trunk_adapters or ())
        if trunk_adapters and len(trunk_adapters) != stages.num_layers:
            raise ValueError(
                f"`trunk_adapters` must have one adapter per block ({stages.num_layers}) or none; "
                f"got {len(trunk_adapters)}."
            )
        bypasses = tuple(bypasses) if bypasses is not None else (None,) * num_exits
        heads = tuple(heads) if heads is not None else (None,) * num_exits
        for name, values in (("bypasses", bypasses), ("heads", heads)):
            if len(values) != num_exits:
                raise ValueError(f"`{name}` must have one entry per exit ({num_exits}); got {len(values)}.")
        self.vit_stages = stages
        self.normalization = normalization
        self.stages = tuple(
            Stage(
                index=k,
                exit_block=stages.exits[k],
                blocks=tuple(blocks),
                adapters=tuple(trunk_adapters[i] for i in blocks) if trunk_adapters else (),
                final_norm=stages.final_norm if k == num_exits - 1 else None,
                bypass=bypasses[k],
                head=heads[k],
            )
            for k, blocks in enumerate(stages.stage_blocks)
        )

    # --- what the stages read and write -----------------------------------
    @property
    def layout(self):
        """The backbone's ``BackboneLayout`` (token layout and sizes)."""
        return self.vit_stages.layout

    @property
    def image_shape(self):
        return self.vit_stages.image_shape

    @property
    def token_shape(self):
        """``(num_tokens, hidden_dim)``: what a stage after the first reads."""
        return (self.vit_stages.num_tokens, self.vit_stages.hidden_dim)

    # --- the forward pass -------------------------------------------------
    def embed(self, images, training=None):
        """Stage 0's input: the normalisation (if any) and the patch embedding."""
        if self.normalization is not None:
            scale, offset = self.normalization
            images = ops.add(ops.multiply(images, scale), offset)
        return self.vit_stages.embed(images, training=training)

    def run_trunk(self, stage, tokens, training=None):
        """The blocks of ``stage``, each with its trunk adapter."""
        for position, index in enumerate(stage.blocks):
            outputs = self.vit_stages.call_block(index, tokens, training)
            if stage.adapters:
                outputs = stage.adapters[position](tokens, outputs, training=training)
            tokens = outputs
        return tokens

    def predict(self, stage, tokens, training=None):
        """``stage``'s exit on the trunk tokens after its blocks: the logits
        (or, without a head, the features the head would read).

        The trunk goes on with ``tokens`` untouched: the final LayerNorm and
        the bypass feed the predictor only.
        """
        features = tokens
        if stage.final_norm is not None:
            features = stage.final_norm(features)
        if stage.bypass is not None:
            features = stage.bypass(features, training=training)
        if stage.head is None:
            return features
        return stage.head(features, training=training)

    def run(self, stage, tokens, training=None):
        """``stage`` on its input tokens: ``(trunk_tokens, exit_outputs)``."""
        tokens = self.run_trunk(stage, tokens, training)
        return tokens, self.predict(stage, tokens, training)

    def __call__(self, images, training=None):
        """Every exit's outputs on ``images``, in exit order (a list)."""
        tokens = self.embed(images, training)
        outputs = []
        for stage in self.stages:
            tokens, exit_outputs = self.run(stage, tokens, training)
            outputs.append(exit_outputs)
        return outputs
