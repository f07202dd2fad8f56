"""Parallel bottleneck adapter around a frozen transformer block (AdaptFormer)."""

import keras

from keras_dmpo import layer_defaults
from keras_dmpo.layers._checks import check_positive_int, check_tokens_shape


@keras.saving.register_keras_serializable(package="keras_dmpo")
class ParallelAdapter(keras.layers.Layer):
    """Parallel adapter: ``block_outputs + scale * Up(act(Down(inputs)))``.

    The trunk PEFT of DMPO. The adapter reads the tokens that enter a frozen
    block (``inputs``) and adds its bottleneck output to what the block made
    (``block_outputs``). ``Up`` is zero-initialised (kernel and bias), so at
    step 0 the adapted model is exactly the pre-trained one.

    Follows the dtype policy like the frozen block it wraps: under
    ``mixed_bfloat16`` / ``mixed_float16`` it computes in bfloat16 / float16
    (the learnable scale is cast to it) and its variables stay float32.

    Args:
        bottleneck_dim: int >= 1, width of the bottleneck.
        scale: float, multiplier of the adapter branch (its initial value when
            ``learnable_scale=True``).
        learnable_scale: bool, if True the scale is a trainable scalar.
        dropout: float, dropout rate after the activation (training only).
        activation: activation of the bottleneck, default ``"gelu"``.
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``,
            ``dtype``, ...).

    Call arguments:
        inputs: the block's input tokens, shape ``(batch, tokens, width)``.
        block_outputs: the block's output tokens, same shape.
        training: bool, whether dropout is active.

    Example:
    >>> import keras_hub
    >>> block = keras_hub.layers.TransformerEncoder(intermediate_dim=64, num_heads=2)
    >>> h = np.random.rand(2, 17, 32).astype("float32")  # (batch, tokens, width)
    >>> block_out = block(h)  # in DMPOClassifier: a frozen block of the backbone
    >>> adapter = ParallelAdapter(bottleneck_dim=8)
    >>> h_next = adapter(h, block_out)
    >>> np.allclose(keras.ops.convert_to_numpy(h_next), keras.ops.convert_to_numpy(block_out))
    True
    """

    def __init__(
        self,
        bottleneck_dim,
        scale=layer_defaults.ADAPTER_SCALE,
        learnable_scale=False,
        dropout=0.0,
        activation="gelu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.bottleneck_dim = check_positive_int("bottleneck_dim", bottleneck_dim)
        self.scale = float(scale)
        self.learnable_scale = bool(learnable_scale)
        self.dropout = float(dropout)
        self.activation = activation
        self._activation_fn = keras.activations.get(activation)
        self.down = keras.layers.Dense(self.bottleneck_dim, dtype=self.dtype_policy, name="down")
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="dropout")
        self.up = None  # built once the width is known

    def build(self, inputs_shape, block_outputs_shape):
        inputs_shape = check_tokens_shape("inputs", inputs_shape)
        block_outputs_shape = check_tokens_shape("block_outputs", block_outputs_shape)
        if inputs_shape[-1] != block_outputs_shape[-1]:
            raise ValueError(
                "`inputs` and `block_outputs` must have the same width; got "
                f"shapes {inputs_shape} and {block_outputs_shape}."
            )
        width = block_outputs_shape[-1]
        self.down.build(inputs_shape)
        # Zero kernel and bias: the adapted block starts as the frozen block.
        self.up = keras.layers.Dense(
            width, kernel_initializer="zeros", bias_initializer="zeros", dtype=self.dtype_policy, name="up"
        )
        self.up.build(inputs_shape[:-1] + (self.bottleneck_dim,))
        if self.learnable_scale:
            self.scale_weight = self.add_weight(
                name="scale", shape=(), initializer=keras.initializers.Constant(self.scale), trainable=True
            )
        self.built = True

    def call(self, inputs, block_outputs, training=None):
        hidden = self._activation_fn(self.down(inputs))
        hidden = self.dropout_layer(hidden, training=training)
        update = self.up(hidden)
        scale = self.scale_weight if self.learnable_scale else self.scale
        return block_outputs + keras.ops.cast(scale, update.dtype) * update

    def compute_output_shape(self, inputs_shape, block_outputs_shape):
        return tuple(block_outputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bottleneck_dim": self.bottleneck_dim,
                "scale": self.scale,
                "learnable_scale": self.learnable_scale,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self._activation_fn)
                if not isinstance(self.activation, str)
                else self.activation,
            }
        )
        return config
