"""Analytic FLOPs of a DMPO early-exit ViT, per image.

Convention: **one multiply-add is 2 FLOPs**. A matmul of ``(M, K) @ (K, N)``
costs ``2 * M * N * K``; a convolution costs 2 FLOPs per (output element,
kernel tap) pair. This is also how XLA's ``cost_analysis()`` counts a dot
(checked: a 64x32 @ 32x16 matmul reports 65,536 = 2*64*32*16 FLOPs).

Elementwise work is counted too, at the per-element costs below, because at
small widths it is not negligible (the exact GELU alone is ~5% of a 128-wide
block). Every arithmetic op on one element is 1 FLOP, transcendental or not
(``exp``, ``rsqrt`` and a division count 1 each):

- bias add, residual add, scalar scale: 1 per output element.
- LayerNorm over rows of width ``D``: 7 per element (mean, subtract, square,
  variance sum, normalise, gamma, beta) + 4 per row (two divisions by ``D``,
  epsilon, rsqrt). See ``layer_norm_flops``.
- softmax: 5 per element (max, subtract, exp, sum, divide).
- GELU (exact, erf form, Keras' default): ``GELU_FLOPS`` = 65 per element.
  Erf has no hardware instruction; XLA evaluates ``jax.nn.gelu``'s erfc as a
  rational polynomial: its ``cost_analysis`` reports 64 FLOPs + 1
  transcendental per element, which we take as the cost.
- Reshapes, slices, concatenations, gathers and dropout (inference) are free.

Not counted: the position-id lookup (a gather), the tile of the class token.
The depthwise convolution of the bypass counts only taps that fall inside the
patch grid ("same" padding taps on the zero border are skipped, as XLA does).

All functions return Python ints (FLOPs for ONE image) and import nothing
framework-specific, so the counter can be used on a phone-side machine too.
"""

import dataclasses

from keras_dmpo import layer_defaults

# Per-element costs (FLOPs), see the module docstring.
BIAS_FLOPS = 1
LAYER_NORM_FLOPS_PER_ELEMENT = 7
LAYER_NORM_FLOPS_PER_ROW = 4
SOFTMAX_FLOPS = 5
GELU_FLOPS = 65

HEAD_KINDS = ("linear", "covariance")
FUSIONS = ("mean", "sum", "covariance_only")


def _pair(value, name):
    if isinstance(value, int):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"`{name}` must be an int or a pair; got {value!r}.")
    return value


def dense_flops(rows, in_dim, out_dim, use_bias=True):
    """FLOPs of a Dense layer applied to ``rows`` vectors: ``2*rows*in*out`` + bias."""
    return 2 * rows * in_dim * out_dim + (BIAS_FLOPS * rows * out_dim if use_bias else 0)


def layer_norm_flops(num_tokens, dim):
    """FLOPs of a LayerNorm over ``num_tokens`` rows of width ``dim``.

    Args:
        num_tokens: number of normalised rows (tokens).
        dim: width of each row.
    """
    return num_tokens * (LAYER_NORM_FLOPS_PER_ELEMENT * dim + LAYER_NORM_FLOPS_PER_ROW)


def gelu_flops(num_elements):
    """FLOPs of an exact GELU on ``num_elements`` values (``GELU_FLOPS`` each)."""
    return GELU_FLOPS * num_elements


def vit_num_tokens(image_shape, patch_size, num_prefix_tokens=1):
    """Prefix tokens (class first) plus the patch grid of a ViT."""
    ph, pw = _pair(patch_size, "patch_size")
    return num_prefix_tokens + (int(image_shape[0]) // ph) * (int(image_shape[1]) // pw)


def vit_embedding_flops(image_shape, patch_size, hidden_dim, num_channels=None, position_tokens=None):
    """FLOPs of keras-hub's ``ViTPatchingAndEmbedding``.

    Patch convolution (kernel = stride = patch size, with bias) plus the
    position-embedding add on every token (class token included). The class
    token concatenation and the position-id lookup are free.

    Args:
        image_shape: ``(height, width)`` or ``(height, width, channels)``.
        patch_size: int or ``(ph, pw)``.
        hidden_dim: token width ``D``.
        num_channels: input channels; defaults to ``image_shape[2]`` when
            given there, else 3.
        position_tokens: tokens that get a position embedding added; default
            the patches plus the class token (ViT, DINOv2); DeiT adds it to
            its distillation token too; DINOv2's registers get none.
    """
    ph, pw = _pair(patch_size, "patch_size")
    if num_channels is None:
        num_channels = int(image_shape[2]) if len(image_shape) > 2 else 3
    num_patches = (int(image_shape[0]) // ph) * (int(image_shape[1]) // pw)
    conv = dense_flops(num_patches, ph * pw * num_channels, hidden_dim)
    if position_tokens is None:
        position_tokens = num_patches + 1
    position_add = position_tokens * hidden_dim
    return conv + position_add


def attention_flops(num_tokens, hidden_dim, num_heads, use_bias=True):
    """FLOPs of Keras' ``MultiHeadAttention`` (self-attention, with biases).

    Q, K, V projections; query scaling by ``1/sqrt(key_dim)``; scores
    ``Q K^T``; softmax; ``A V``; output projection. ``key_dim`` is
    ``hidden_dim // num_heads`` as in keras-hub's ViT.
    """
    t, d, h = num_tokens, hidden_dim, num_heads
    key_dim = d // h
    inner = h * key_dim
    projections = 3 * dense_flops(t, d, inner, use_bias)
    query_scale = t * inner
    scores = 2 * h * t * t * key_dim
    softmax = SOFTMAX_FLOPS * h * t * t
    weighted_values = 2 * h * t * t * key_dim
    output = dense_flops(t, inner, d, use_bias)
    return projections + query_scale + scores + softmax + weighted_values + output


def vit_block_flops(num_tokens, hidden_dim, mlp_dim, num_heads, layer_scale=False, attention_bias=True):
    """FLOPs of one pre-norm transformer block of a keras-hub ViT-family model.

    ``x = x + MHA(LN(x)); x = x + Dense(GELU(Dense(LN(x))))`` (``ViTEncoderBlock``,
    ``DeiTEncoderBlock``); with ``layer_scale`` each branch is multiplied by a
    per-channel LayerScale before its residual add (``DINOV2Layer``).

    Args:
        num_tokens: tokens per image ``T`` (class token included).
        hidden_dim: token width ``D``.
        mlp_dim: hidden width of the MLP.
        num_heads: attention heads.
        layer_scale: DINOv2's LayerScale (``t * d`` per branch).
        attention_bias: whether the attention projections have biases.
    """
    t, d, m = num_tokens, hidden_dim, mlp_dim
    attention = layer_norm_flops(t, d) + attention_flops(t, d, num_heads, attention_bias) + t * d
    mlp = (
        layer_norm_flops(t, d)
        + dense_flops(t, d, m)
        + gelu_flops(t * m)
        + dense_flops(t, m, d)
        + t * d  # residual
    )
    scales = 2 * t * d if layer_scale else 0
    return attention + mlp + scales


def parallel_adapter_flops(num_tokens, hidden_dim, bottleneck_dim):
    """FLOPs of a trunk ``ParallelAdapter``: ``out + s * Up(GELU(Down(x)))``.

    Args:
        num_tokens: tokens per image.
        hidden_dim: token width ``D``.
        bottleneck_dim: adapter width ``b``; 0 or None means no adapter (0).
    """
    if not bottleneck_dim:
        return 0
    t, d, b = num_tokens, hidden_dim, bottleneck_dim
    return (
        dense_flops(t, d, b) + gelu_flops(t * b) + dense_flops(t, b, d) + 2 * t * d  # scale and add
    )


def _same_conv_taps(size, kernel_size):
    """In-grid (output, tap) pairs of a 1-D "same" convolution."""
    before = (kernel_size - 1) // 2
    return sum(sum(1 for j in range(kernel_size) if 0 <= i + j - before < size) for i in range(size))


def bypass_adapter_flops(
    num_tokens,
    hidden_dim,
    bottleneck_dim,
    kernel_size=layer_defaults.BYPASS_KERNEL_SIZE,
    num_prefix_tokens=1,
    grid_shape=None,
):
    """FLOPs of a ``BypassAdapter``: ``x + s * Up(DWConv(GELU(Down(x))))``.

    Down and GELU on all tokens; the depthwise ``kernel_size`` x
    ``kernel_size`` convolution (with bias, "same" padding) on the
    patch tokens only (the prefix tokens skip it); Up on all tokens; scale
    and residual add.

    Args:
        num_tokens: tokens per image, ``1 + g*g``.
        hidden_dim: token width ``D``.
        bottleneck_dim: bypass width ``b``; 0 or None means no bypass (0).
        kernel_size: side of the depthwise convolution.
        num_prefix_tokens: special tokens before the grid.
        grid_shape: ``(rows, cols)``; None: a square grid.
    """
    if not bottleneck_dim:
        return 0
    t, d, b = num_tokens, hidden_dim, bottleneck_dim
    patches = t - num_prefix_tokens
    if grid_shape is None:
        side = int(round(max(patches, 0) ** 0.5))
        grid_shape = (side, side)
    rows, cols = grid_shape
    if rows < 1 or rows * cols != patches:
        raise ValueError(
            f"`num_tokens`={t} is not {num_prefix_tokens} prefix token(s) plus a {rows}x{cols} patch grid."
        )
    taps = _same_conv_taps(rows, kernel_size) * _same_conv_taps(cols, kernel_size)
    conv = 2 * b * taps + BIAS_FLOPS * rows * cols * b
    return (
        dense_flops(t, d, b) + gelu_flops(t * b) + conv + dense_flops(t, b, d) + 2 * t * d  # scale and add
    )


def linear_head_flops(hidden_dim, num_classes, use_layer_norm=True, num_tokens=None, pooling="class_token"):
    """FLOPs of a ``LinearExitHead``: pool, (LayerNorm,) Dense.

    Assumption (matches ``keras_dmpo.layers.LinearExitHead``): the head pools
    first, then normalises the pooled ``(batch, D)`` vector, so the LayerNorm
    costs one row whatever the pooling.

    Args:
        hidden_dim: token width ``D``.
        num_classes: number of logits ``C``.
        use_layer_norm: whether the head has its own LayerNorm (False for the
            last exit, which reads the backbone's final LayerNorm output).
        num_tokens: tokens per image; needed only for ``pooling="mean"``.
        pooling: ``"class_token"`` (free) or ``"mean"`` over the patch tokens.
    """
    flops = 0
    if pooling == "mean":
        if num_tokens is None:
            raise ValueError('`num_tokens` is required for pooling="mean".')
        flops += (num_tokens - 1) * hidden_dim  # sum (T-2 adds) + one division
    elif pooling != "class_token":
        raise ValueError(f'`pooling` must be "class_token" or "mean"; got {pooling!r}.')
    if use_layer_norm:
        flops += layer_norm_flops(1, hidden_dim)
    return flops + dense_flops(1, hidden_dim, num_classes)


def newton_schulz_matmuls(iterations):
    """Matmuls of the folded coupled Newton-Schulz iteration.

    ``Y0 = A, Z0 = I; T = (3I - Z Y)/2; Y <- Y T; Z <- T Z``: 3 matmuls per
    iteration, but the first (``Z = I``: ``Y1 = A T1``, ``Z1 = T1``) needs 1
    and the last needs 2 (its ``Z`` update is unused), as in
    ``keras_dmpo.layers.covariance_pooling.newton_schulz_sqrt``: ``3n - 3``
    matmuls for ``n >= 2`` iterations, 1 for ``n = 1``.
    """
    return 1 if iterations == 1 else 3 * iterations - 3


def covariance_pooling_flops(num_tokens, hidden_dim, covariance_dim, iterations, num_prefix_tokens=1):
    """FLOPs of ``CovariancePooling`` (no classifier). See ``covariance_head_flops``."""
    t, d_in, d = num_tokens, hidden_dim, covariance_dim
    n = t - num_prefix_tokens  # patch tokens
    flops = layer_norm_flops(t, d_in)  # the layer normalises every token
    flops += dense_flops(n, d_in, d)  # reduce D -> d on patch tokens
    flops += n * d + d + n * d  # mean (sum + divide), centring
    flops += 2 * n * d * d + d * d  # X^T X and division by N
    flops += d * d  # + epsilon * I
    flops += 2 * d * d + d * d  # trace (mask multiply + sum), divide by trace
    flops += newton_schulz_matmuls(iterations) * 2 * d**3
    flops += iterations * 2 * d * d  # T = 0.5 * (3I - .) every iteration
    flops += 1 + d * d  # sqrt(trace), rescale
    return flops  # the upper-triangle gather is free


def covariance_head_flops(
    num_tokens,
    hidden_dim,
    covariance_dim,
    iterations,
    num_classes,
    fusion=layer_defaults.COVARIANCE_FUSION,
    num_prefix_tokens=1,
):
    """FLOPs of a ``CovarianceExitHead`` (covariance branch + fused linear head).

    Covariance branch: LayerNorm on all ``T`` tokens (the layer normalises
    before slicing), Dense ``D -> d`` on the ``T-1`` patch tokens, centring,
    ``X^T X / N`` (``2 (T-1) d^2``), ``+ eps I``, trace normalisation,
    Newton-Schulz (``newton_schulz_matmuls(iterations)`` matmuls of
    ``2 d^3`` plus ``2 d^2`` elementwise per iteration), ``* sqrt(trace)``, the
    upper triangle, Dense ``d(d+1)/2 -> C``. With ``fusion`` ``"mean"`` or
    ``"sum"`` a ``LinearExitHead`` (LayerNorm + Dense on the class token) is
    added and the logits combined (``C`` or ``2C`` FLOPs).

    Args:
        num_tokens: tokens per image ``T`` (class token included).
        hidden_dim: token width ``D``.
        covariance_dim: reduced dimension ``d``.
        iterations: Newton-Schulz iterations.
        num_classes: number of logits ``C``.
        fusion: ``"mean"``, ``"sum"`` or ``"covariance_only"``.
        num_prefix_tokens: special tokens before the grid (not in the
            covariance).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"`fusion` must be one of {FUSIONS}; got {fusion!r}.")
    d = covariance_dim
    flops = covariance_pooling_flops(num_tokens, hidden_dim, d, iterations, num_prefix_tokens)
    flops += dense_flops(1, d * (d + 1) // 2, num_classes)
    if fusion != "covariance_only":
        flops += linear_head_flops(hidden_dim, num_classes, use_layer_norm=True)
        flops += num_classes * (2 if fusion == "mean" else 1)
    return flops


# --- what a model's FLOPs depend on ------------------------------------------


def describe_layer(layer):
    """``{"class_name", "config"}`` of a layer (Keras' serialised form, read
    without Keras), or None for None: what the counter reads of a layer."""
    if layer is None:
        return None
    return {"class_name": type(layer).__name__, "config": dict(layer.get_config())}


@dataclasses.dataclass(frozen=True)
class StageCost:
    """What one stage's FLOPs depend on: its layers, as configs.

    Attributes:
        num_blocks: backbone blocks the stage runs.
        adapters: one ``describe_layer`` dict per block for its trunk
            adapter (``ParallelAdapter``), or ``()``.
        bypass: the exit's ``BypassAdapter`` (a ``describe_layer`` dict) or
            None.
        head: the exit head (``LinearExitHead`` or ``CovarianceExitHead``,
            a ``describe_layer`` dict), or None (no head: 0 FLOPs).
        final_norm: whether the exit reads through the backbone's final
            LayerNorm (the last exit).
    """

    num_blocks: int
    head: object
    adapters: tuple = ()
    bypass: object = None
    final_norm: bool = False


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """What the FLOPs of an early-exit ViT depend on, read off the model by
    ``model_cost`` (or written by hand, without building a model).

    Attributes:
        layout: the backbone's shape facts: a ``BackboneLayout``
            (``ViTStages.layout``) or any object with its attributes
            (``image_shape``, ``patch_size``, ``num_layers``, ``hidden_dim``,
            ``mlp_dim``, ``num_heads``, ``num_prefix_tokens``, ``grid_shape``,
            ``num_tokens``, ``layer_scale``, ``attention_bias``, and
            ``family`` or ``num_register_tokens``).
        stages: one ``StageCost`` per exit, in order.
        input_normalization: whether stage 1 normalises the pixels (2 FLOPs
            per input value).
    """

    layout: object
    stages: tuple
    input_normalization: bool = False


def model_cost(model):
    """The ``ModelCost`` of a ``DMPOClassifier`` (or of its ``StagePlan``),
    read from its stage plan and its layers' own configs.

    Trunk tuning by LoRA adds no per-image FLOPs: keras merges the low-rank
    factors into the kernel once per call (per batch), and an exported graph
    holds the merged kernel as a constant.
    """
    plan = getattr(model, "stage_plan", model)
    if not hasattr(plan, "stages") or not hasattr(plan, "layout"):
        raise ValueError(
            "`model` must be a keras_dmpo DMPOClassifier or its StagePlan (`model.stage_plan`); "
            f"got {type(model).__name__}."
        )
    stages = tuple(
        StageCost(
            num_blocks=len(stage.blocks),
            adapters=tuple(describe_layer(adapter) for adapter in stage.adapters),
            bypass=describe_layer(stage.bypass),
            head=describe_layer(stage.head),
            final_norm=stage.final_norm is not None,
        )
        for stage in plan.stages
    )
    return ModelCost(layout=plan.layout, stages=stages, input_normalization=plan.normalization is not None)


def _register_tokens(layout):
    """Prefix tokens without a position embedding (DINOv2's registers)."""
    if hasattr(layout, "num_register_tokens"):
        return int(layout.num_register_tokens)
    return int(layout.num_prefix_tokens) - 1 if getattr(layout, "family", "vit") == "dinov2" else 0


def _check_gelu(class_name, config):
    activation = config.get("activation", "gelu")
    if activation != "gelu":
        raise ValueError(
            f"The FLOPs counter knows the GELU activation only; got a {class_name} with "
            f"activation={activation!r}."
        )


def layer_flops(layer, layout):
    """FLOPs of one keras_dmpo layer on one image's tokens, from its config.

    Args:
        layer: a ``describe_layer`` dict of a ``ParallelAdapter``,
            ``BypassAdapter``, ``LinearExitHead`` or ``CovarianceExitHead``,
            or None (0).
        layout: the backbone's layout (see ``ModelCost``).
    """
    if layer is None:
        return 0
    class_name, config = layer["class_name"], layer["config"]
    t, d = layout.num_tokens, layout.hidden_dim
    if class_name == "ParallelAdapter":
        _check_gelu(class_name, config)
        return parallel_adapter_flops(t, d, config["bottleneck_dim"])
    if class_name == "BypassAdapter":
        _check_gelu(class_name, config)
        return bypass_adapter_flops(
            t,
            d,
            config["bottleneck_dim"],
            config.get("kernel_size", layer_defaults.BYPASS_KERNEL_SIZE),
            config.get("num_prefix_tokens", layout.num_prefix_tokens),
            config.get("grid_shape") or layout.grid_shape,
        )
    if class_name == "LinearExitHead":
        return linear_head_flops(
            d,
            config["num_classes"],
            config.get("use_layer_norm", True),
            num_tokens=t - config.get("num_prefix_tokens", layout.num_prefix_tokens) + 1,
            pooling=config.get("pooling", "class_token"),
        )
    if class_name == "CovarianceExitHead":
        return covariance_head_flops(
            t,
            d,
            config.get("covariance_dim", layer_defaults.COVARIANCE_DIM),
            config.get("iterations", layer_defaults.COVARIANCE_ITERATIONS),
            config["num_classes"],
            config.get("fusion", layer_defaults.COVARIANCE_FUSION),
            config.get("num_prefix_tokens", layout.num_prefix_tokens),
        )
    raise ValueError(
        f"No FLOPs formula for a {class_name} layer; expected a ParallelAdapter, BypassAdapter, "
        "LinearExitHead or CovarianceExitHead."
    )


@dataclasses.dataclass(frozen=True)
class ExitFlops:
    """FLOPs per image of a DMPO early-exit model (all lists have one per exit).

    Attributes:
        stage_flops: incremental cost of stage k: its blocks (+ adapters),
            its bypass and its head (stage 1 also the embedding; the last
            stage also the final LayerNorm).
        flops_per_exit: cumulative cost of answering at exit k.
        full_model_flops: the same backbone (adapters included) with the
            final LayerNorm and only the last exit's predictor: "100%".
        head_flops: cost of each exit's head (bypass and final LayerNorm
            excluded).
        bypass_flops: cost of each exit's bypass (0 when none).
    """

    stage_flops: list
    flops_per_exit: list
    full_model_flops: int
    head_flops: list
    bypass_flops: list

    @property
    def fractions(self):
        """``flops_per_exit / full_model_flops``."""
        return [f / self.full_model_flops for f in self.flops_per_exit]

    def to_dict(self):
        return dataclasses.asdict(self)


def count_flops(cost):
    """Per-exit FLOPs of a ``ModelCost``; see ``ExitFlops``.

    Stage k pays for its blocks with their adapters, its exit's final
    LayerNorm (the last exit), bypass and head; stage 1 also for the input
    normalisation and the patch embedding. The full model is the embedding,
    every block with its adapter and the last exit's predictor.
    """
    layout = cost.layout
    stages = tuple(cost.stages)
    if not stages:
        raise ValueError("`cost.stages` is empty; expected one StageCost per exit.")
    blocks = sum(stage.num_blocks for stage in stages)
    if blocks != layout.num_layers:
        raise ValueError(
            f"The stages run {blocks} blocks in all; the backbone has num_layers={layout.num_layers}."
        )
    t, d = layout.num_tokens, layout.hidden_dim
    block = vit_block_flops(
        t, d, layout.mlp_dim, layout.num_heads, bool(layout.layer_scale), bool(layout.attention_bias)
    )
    embedding = vit_embedding_flops(
        layout.image_shape, layout.patch_size, d, position_tokens=t - _register_tokens(layout)
    )
    if cost.input_normalization:
        height, width = layout.image_shape[:2]
        channels = layout.image_shape[2] if len(layout.image_shape) > 2 else 3
        embedding += 2 * int(height) * int(width) * int(channels)  # x * scale + offset
    final_norm = layer_norm_flops(t, d)

    trunk_flops, norm_flops, head_flops, bypass_flops, stage_flops = [], [], [], [], []
    for k, stage in enumerate(stages):
        if stage.adapters and len(stage.adapters) != stage.num_blocks:
            raise ValueError(
                f"Stage {k + 1} runs {stage.num_blocks} blocks but has {len(stage.adapters)} trunk "
                "adapters; expected one per block or none."
            )
        trunk = stage.num_blocks * block + sum(layer_flops(a, layout) for a in stage.adapters)
        if k == 0:
            trunk += embedding
        norm = final_norm if stage.final_norm else 0
        head = layer_flops(stage.head, layout)
        side = layer_flops(stage.bypass, layout)
        trunk_flops.append(trunk)
        norm_flops.append(norm)
        head_flops.append(head)
        bypass_flops.append(side)
        stage_flops.append(trunk + norm + side + head)

    cumulative, total = [], 0
    for stage in stage_flops:
        total += stage
        cumulative.append(total)
    full = sum(trunk_flops) + norm_flops[-1] + bypass_flops[-1] + head_flops[-1]
    return ExitFlops(
        stage_flops=stage_flops,
        flops_per_exit=cumulative,
        full_model_flops=full,
        head_flops=head_flops,
        bypass_flops=bypass_flops,
    )


def flops_of(model):
    """Per-exit FLOPs of a model, per image, read from its own layers.

    Args:
        model: a ``DMPOClassifier``, its ``StagePlan`` or a ``ModelCost``.

    Returns:
        ``ExitFlops``: ``stage_flops``, ``flops_per_exit`` (cumulative: the
        embedding, the blocks up to exit k, every predictor and bypass on
        the way, exit k's own included), ``full_model_flops`` (the
        single-exit model: backbone, adapters, the last predictor),
        ``head_flops`` and ``bypass_flops``.

    Example:

    >>> from keras_dmpo import DMPOClassifier
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 4, 8])
    >>> cost = flops_of(model)
    >>> len(cost.flops_per_exit), cost.fractions[0] < 0.5
    (3, True)
    """
    cost = model if isinstance(model, ModelCost) else model_cost(model)
    return count_flops(cost)


# --- a hand-written description of a DMPO ViT ------------------------------


@dataclasses.dataclass(frozen=True)
class ExitCostConfig:
    """A DMPO early-exit ViT described field by field, for FLOPs without a
    model (``flops_of`` reads a built model's own layers instead).

    Args:
        image_shape: ``(height, width, channels)``.
        patch_size: int or pair.
        num_layers, hidden_dim, mlp_dim, num_heads: the ViT's config.
        num_classes: number of logits.
        exits: increasing 1-based block numbers, the last one ``num_layers``.
        head_kinds: per exit ``"linear"`` or ``"covariance"``; a single string
            applies to every exit but the last, which is always a linear head
            on the final LayerNorm.
        bypass: per exit bool; a single bool applies to every exit but the
            last (which has no bypass).
        bypass_bottleneck: bypass width.
        adapter_bottleneck: trunk parallel adapter width per block; 0/None:
            no adapters.
        covariance_dim, iterations: covariance head parameters.
        covariance_fusion: ``"mean"``, ``"sum"`` or ``"covariance_only"``.
        last_head_layer_norm: whether the last linear head has its own
            LayerNorm on top of the backbone's final one (default False).
        bypass_kernel_size: side of the bypass depthwise convolution.
        num_prefix_tokens: special tokens before the patch grid (1 for ViT,
            2 for DeiT, 1 + registers for DINOv2).
        num_register_tokens: prefix tokens without a position embedding
            (DINOv2's registers).
        layer_scale: DINOv2's LayerScale in every block.
        attention_bias: biases on the attention projections.
        input_normalization: whether stage 1 normalises the pixels (2 FLOPs
            per input value).
    """

    image_shape: tuple
    patch_size: object
    num_layers: int
    hidden_dim: int
    mlp_dim: int
    num_heads: int
    num_classes: int
    exits: tuple
    head_kinds: object = "linear"
    bypass: object = False
    bypass_bottleneck: int = 0
    adapter_bottleneck: int = 0
    covariance_dim: int = layer_defaults.COVARIANCE_DIM
    iterations: int = layer_defaults.COVARIANCE_ITERATIONS
    covariance_fusion: str = layer_defaults.COVARIANCE_FUSION
    last_head_layer_norm: bool = False
    bypass_kernel_size: int = layer_defaults.BYPASS_KERNEL_SIZE
    num_prefix_tokens: int = 1
    num_register_tokens: int = 0
    layer_scale: bool = False
    attention_bias: bool = True
    input_normalization: bool = False

    @classmethod
    def from_stages(cls, stages, num_classes, **kwargs):
        """Build from a ``ViTStages`` (its ``layout`` and ``exits``), or any
        object with the same attributes (a missing token layout means a ViT:
        one class token, no LayerScale)."""
        layout = getattr(stages, "layout", stages)
        prefix = int(getattr(layout, "num_prefix_tokens", 1))
        family = getattr(layout, "family", "vit")
        return cls(
            image_shape=tuple(layout.image_shape),
            patch_size=tuple(layout.patch_size),
            num_layers=layout.num_layers,
            hidden_dim=layout.hidden_dim,
            mlp_dim=layout.mlp_dim,
            num_heads=layout.num_heads,
            num_classes=num_classes,
            exits=tuple(stages.exits),
            num_prefix_tokens=prefix,
            num_register_tokens=prefix - 1 if family == "dinov2" else 0,
            layer_scale=bool(getattr(layout, "layer_scale", False)),
            attention_bias=bool(getattr(layout, "attention_bias", True)),
            **kwargs,
        )

    @property
    def grid_shape(self):
        ph, pw = _pair(self.patch_size, "patch_size")
        return int(self.image_shape[0]) // ph, int(self.image_shape[1]) // pw

    @property
    def num_tokens(self):
        return vit_num_tokens(self.image_shape, self.patch_size, self.num_prefix_tokens)

    def per_exit(self):
        """``(head_kinds, bypass)`` as validated tuples of length K."""
        exits = tuple(int(e) for e in self.exits)
        k = len(exits)
        if not k or list(exits) != sorted(set(exits)) or exits[0] < 1:
            raise ValueError(f"`exits` must be increasing 1-based ints; got {self.exits!r}.")
        if exits[-1] != self.num_layers:
            raise ValueError(f"The last exit must be block num_layers={self.num_layers}; got exits={exits}.")
        # A single value applies to the early exits; the last exit is always a
        # linear head on the final LayerNorm, without bypass.
        kinds = self.head_kinds
        if isinstance(kinds, str):
            kinds = (kinds,) * (k - 1) + ("linear",)
        kinds = tuple(kinds)
        bypass = self.bypass
        if isinstance(bypass, bool):
            bypass = (bypass,) * (k - 1) + (False,)
        bypass = tuple(bool(b) for b in bypass)
        for name, values in (("head_kinds", kinds), ("bypass", bypass)):
            if len(values) != k:
                raise ValueError(
                    f"`{name}` has {len(values)} entries; expected one per exit ({k}: exits={exits})."
                )
        for kind in kinds:
            if kind not in HEAD_KINDS:
                raise ValueError(f"`head_kinds` entries must be in {HEAD_KINDS}; got {kind!r}.")
        if kinds[-1] != "linear":
            raise ValueError(
                "The last exit's head is the backbone's final LayerNorm + a linear "
                f"head; got head_kinds[-1]={kinds[-1]!r}."
            )
        return kinds, bypass

    def to_model_cost(self):
        """The ``ModelCost`` these fields describe (the config is its own layout)."""
        kinds, bypass = self.per_exit()
        prefix = self.num_prefix_tokens
        last = len(self.exits) - 1
        adapter = (
            {"class_name": "ParallelAdapter", "config": {"bottleneck_dim": self.adapter_bottleneck}}
            if self.adapter_bottleneck
            else None
        )
        side = (
            {
                "class_name": "BypassAdapter",
                "config": {
                    "bottleneck_dim": self.bypass_bottleneck,
                    "kernel_size": self.bypass_kernel_size,
                    "num_prefix_tokens": prefix,
                    "grid_shape": self.grid_shape,
                },
            }
            if self.bypass_bottleneck
            else None
        )
        stages, previous = [], 0
        for k, exit_block in enumerate(self.exits):
            if kinds[k] == "covariance":
                head = {
                    "class_name": "CovarianceExitHead",
                    "config": {
                        "num_classes": self.num_classes,
                        "covariance_dim": self.covariance_dim,
                        "iterations": self.iterations,
                        "fusion": self.covariance_fusion,
                        "num_prefix_tokens": prefix,
                    },
                }
            else:
                use_layer_norm = self.last_head_layer_norm if k == last else True
                head = {
                    "class_name": "LinearExitHead",
                    "config": {"num_classes": self.num_classes, "use_layer_norm": use_layer_norm},
                }
            num_blocks = int(exit_block) - previous
            stages.append(
                StageCost(
                    num_blocks=num_blocks,
                    adapters=(adapter,) * num_blocks if adapter else (),
                    bypass=side if bypass[k] else None,
                    head=head,
                    final_norm=k == last,
                )
            )
            previous = int(exit_block)
        return ModelCost(layout=self, stages=tuple(stages), input_normalization=self.input_normalization)


def dmpo_flops_per_exit(config):
    """Per-exit FLOPs of an ``ExitCostConfig`` (or a ``ModelCost``); see
    ``ExitFlops``. For a built model, ``flops_of(model)``."""
    if isinstance(config, ExitCostConfig):
        config = config.to_model_cost()
    return count_flops(config)
