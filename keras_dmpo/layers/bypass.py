"""Bypass adapter that decouples an early predictor from the trunk (Convpass)."""

import keras

from keras_dmpo.layers._checks import (
    check_positive_int,
    check_tokens_shape,
    grid_side,
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
    reshaped to ``(batch, g, g, bottleneck_dim)``; the class token takes the
    same path without the convolution), and a zero-initialised Dense up, so
    at initialisation the output equals the input.

    Args:
        bottleneck_dim: int >= 1, width of the bottleneck.
        scale: float, multiplier of the bypass branch.
        kernel_size: int >= 1, side of the depthwise convolution.
        activation: activation after the down projection, default ``"gelu"``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Call arguments:
        tokens: ``(batch, 1 + g*g, width)``, the class token then the patch
            grid row by row. Any other token count raises ``ValueError``.

    Example:
    >>> bypass = BypassAdapter(bottleneck_dim=8)
    >>> z = bypass(h)  # (batch, 17, 32) -> (batch, 17, 32); z == h at init
    """

    def __init__(
        self, bottleneck_dim, scale=1.0, kernel_size=3, activation="gelu", **kwargs
    ):
        super().__init__(**kwargs)
        self.bottleneck_dim = check_positive_int("bottleneck_dim", bottleneck_dim)
        self.scale = float(scale)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.activation = activation
        self._activation_fn = keras.activations.get(activation)
        self.down = keras.layers.Dense(
            self.bottleneck_dim, dtype=self.dtype_policy, name="down"
        )
        # "same" padding keeps the grid; one filter per channel keeps it cheap
        # (k*k*b weights instead of k*k*b*b).
        self.conv = keras.layers.DepthwiseConv2D(
            self.kernel_size, padding="same", dtype=self.dtype_policy, name="conv"
        )
        self.up = None
        self.grid = None

    def build(self, tokens_shape):
        tokens_shape = check_tokens_shape("tokens", tokens_shape)
        self.grid = grid_side("tokens", tokens_shape[1])
        width = tokens_shape[-1]
        self.down.build(tokens_shape)
        self.conv.build((None, self.grid, self.grid, self.bottleneck_dim))
        # Zero kernel and bias: the predictor starts from the trunk's features.
        self.up = keras.layers.Dense(
            width,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="up",
        )
        self.up.build(tokens_shape[:-1] + (self.bottleneck_dim,))
        self.built = True

    def call(self, tokens):
        grid = self.grid
        if grid is None:  # dynamic token count at build time
            grid = grid_side("tokens", tokens.shape[1])
        hidden = self._activation_fn(self.down(tokens))
        class_token = hidden[:, :1, :]
        patches = keras.ops.reshape(hidden[:, 1:, :], (-1, grid, grid, self.bottleneck_dim))
        patches = self.conv(patches)
        patches = keras.ops.reshape(patches, (-1, grid * grid, self.bottleneck_dim))
        hidden = keras.ops.concatenate([class_token, patches], axis=1)
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
                "activation": self.activation
                if isinstance(self.activation, str)
                else keras.activations.serialize(self._activation_fn),
            }
        )
        return config
