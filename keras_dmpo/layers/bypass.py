"""Bypass adapter that decouples an early predictor from the trunk (Convpass)."""

import keras

from keras_dmpo import layer_defaults
from keras_dmpo.layers._checks import (
    check_grid_shape,
    check_positive_int,
    check_prefix_tokens,
    check_tokens_shape,
    grid_shape_for,
)


@keras.saving.register_keras_serializable(package="keras_dmpo")
class BypassAdapter(keras.layers.Layer):
    """Bypass for an early exit: ``tokens + scale * B(tokens)``.

    DMPO's fix for the conflict of shallow features: the predictor at exit k
    reads ``z_k = h_k + scale * B(h_k)`` while the trunk goes on with ``h_k``
    untouched, so the predictor can make its own, more discriminative features
    without pulling the trunk's ones away from what deeper blocks need.

    ``B`` is a bottleneck: Dense down, GELU, a depthwise ``kernel_size`` x
    ``kernel_size`` convolution over the patch grid (the patch tokens are
    reshaped to ``(batch, rows, cols, bottleneck_dim)``; the prefix tokens,
    class token first, take the same path without the convolution), and a
    zero-initialised Dense up, so at initialisation the output equals the
    input.

    Follows the dtype policy: under ``mixed_bfloat16`` / ``mixed_float16`` it
    computes in bfloat16 / float16 (the sub-layers share its policy) and its
    variables stay float32.

    Args:
        bottleneck_dim: int >= 1, width of the bottleneck.
        scale: float, multiplier of the bypass branch.
        kernel_size: int >= 1, side of the depthwise convolution.
        activation: activation after the down projection, default ``"gelu"``.
        num_prefix_tokens: int >= 1, special tokens before the patch grid
            (1 for ViT's class token, 2 for DeiT's class and distillation
            tokens, 1 + registers for DINOv2).
        grid_shape: ``(rows, cols)`` of the patch grid, or None for a square
            grid inferred from the token count.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Call arguments:
        tokens: ``(batch, num_prefix_tokens + rows*cols, width)``, the prefix
            tokens then the patch grid row by row. Any other token count
            raises ``ValueError``.

    Example:
    >>> h = np.random.rand(2, 17, 32).astype("float32")  # class token + 4x4 patches
    >>> bypass = BypassAdapter(bottleneck_dim=8)
    >>> z = bypass(h)
    >>> tuple(z.shape)
    (2, 17, 32)
    >>> np.allclose(keras.ops.convert_to_numpy(z), h)  # z == h at initialisation
    True
    """

    def __init__(
        self,
        bottleneck_dim,
        scale=1.0,
        kernel_size=layer_defaults.BYPASS_KERNEL_SIZE,
        activation="gelu",
        num_prefix_tokens=1,
        grid_shape=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.bottleneck_dim = check_positive_int("bottleneck_dim", bottleneck_dim)
        self.scale = float(scale)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.activation = activation
        self.num_prefix_tokens = check_prefix_tokens(num_prefix_tokens)
        self.grid_shape = check_grid_shape(grid_shape)
        self._activation_fn = keras.activations.get(activation)
        self.down = keras.layers.Dense(self.bottleneck_dim, dtype=self.dtype_policy, name="down")
        # "same" padding keeps the grid; one filter per channel keeps it cheap
        # (k*k*b weights instead of k*k*b*b).
        self.conv = keras.layers.DepthwiseConv2D(
            self.kernel_size, padding="same", dtype=self.dtype_policy, name="conv"
        )
        self.up = None
        self.grid = None

    def build(self, tokens_shape):
        tokens_shape = check_tokens_shape("tokens", tokens_shape)
        self.grid = grid_shape_for("tokens", tokens_shape[1], self.num_prefix_tokens, self.grid_shape)
        width = tokens_shape[-1]
        self.down.build(tokens_shape)
        self.conv.build((None, None, None, self.bottleneck_dim))
        # Zero kernel and bias: the predictor starts from the trunk's features.
        self.up = keras.layers.Dense(
            width, kernel_initializer="zeros", bias_initializer="zeros", dtype=self.dtype_policy, name="up"
        )
        self.up.build(tokens_shape[:-1] + (self.bottleneck_dim,))
        self.built = True

    def call(self, tokens):
        rows, cols = self.grid or grid_shape_for(  # dynamic token count at build
            "tokens", tokens.shape[1], self.num_prefix_tokens, self.grid_shape
        )
        prefix = self.num_prefix_tokens
        hidden = self._activation_fn(self.down(tokens))
        patches = keras.ops.reshape(hidden[:, prefix:, :], (-1, rows, cols, self.bottleneck_dim))
        patches = self.conv(patches)
        patches = keras.ops.reshape(patches, (-1, rows * cols, self.bottleneck_dim))
        hidden = keras.ops.concatenate([hidden[:, :prefix, :], patches], axis=1)
        # A new tensor: the trunk's ``tokens`` are read, never written.
        return tokens + self.scale * self.up(hidden)

    def compute_output_shape(self, tokens_shape):
        return tuple(tokens_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bottleneck_dim": self.bottleneck_dim,
                "scale": self.scale,
                "kernel_size": self.kernel_size,
                "num_prefix_tokens": self.num_prefix_tokens,
                "grid_shape": None if self.grid_shape is None else list(self.grid_shape),
                "activation": self.activation
                if isinstance(self.activation, str)
                else keras.activations.serialize(self._activation_fn),
            }
        )
        return config
