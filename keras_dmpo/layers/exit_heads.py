"""Exit predictors: a linear head and the covariance (second-order) head."""

import keras

from keras_dmpo import layer_defaults
from keras_dmpo.layers._checks import (
    check_choice,
    check_positive_int,
    check_prefix_tokens,
    check_tokens_shape,
)
from keras_dmpo.layers.covariance_pooling import CovariancePooling, float32_policy_kwargs

POOLINGS = ("class_token", "mean")
FUSIONS = ("mean", "sum", "covariance_only")


class ExitHead(keras.layers.Layer):
    """What every exit predictor shares: tokens ``(batch, tokens, width)`` in,
    ``(batch, num_classes)`` logits out, and the config keys common to all
    (``num_classes``, ``dropout``, ``num_prefix_tokens``)."""

    def _init_common(self, num_classes, dropout, num_prefix_tokens):
        self.num_prefix_tokens = check_prefix_tokens(num_prefix_tokens)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.dropout = float(dropout)

    def compute_output_shape(self, tokens_shape):
        return (tokens_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "dropout": self.dropout,
                "num_prefix_tokens": self.num_prefix_tokens,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_dmpo")
class LinearExitHead(ExitHead):
    """Linear exit predictor: (LayerNorm +) Dense on a pooled token.

    Computes in float32 and returns float32 logits under any dtype policy
    (a ``mixed_bfloat16`` or ``mixed_float16`` policy is replaced by float32,
    the tokens are cast on entry): the logits feed the softmax of the loss and
    of the exit rule, and the head is one pooled vector per image.

    Args:
        num_classes: int >= 1, number of logits.
        pooling: ``"class_token"`` (token 0, default) or ``"mean"`` (mean of
            the patch tokens, the prefix tokens excluded).
        use_layer_norm: bool. Set False for the last exit, whose tokens already
            went through the backbone's final LayerNorm.
        dropout: float, dropout rate before the Dense (training only).
        num_prefix_tokens: int >= 1, special tokens before the patch grid
            (skipped by ``"mean"`` pooling).
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Call arguments:
        tokens: ``(batch, tokens, width)``.
        training: bool, whether dropout is active.

    Returns:
        ``(batch, num_classes)`` float32 logits.

    Example:
    >>> head = LinearExitHead(num_classes=10)
    >>> tuple(head(np.random.rand(2, 17, 32)).shape)
    (2, 10)
    """

    def __init__(
        self,
        num_classes,
        pooling="class_token",
        use_layer_norm=True,
        dropout=0.0,
        num_prefix_tokens=1,
        **kwargs,
    ):
        super().__init__(**float32_policy_kwargs(kwargs))
        self._init_common(num_classes, dropout, num_prefix_tokens)
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.use_layer_norm = bool(use_layer_norm)
        self.layer_norm = (
            keras.layers.LayerNormalization(epsilon=1e-6, dtype=self.dtype_policy, name="layer_norm")
            if self.use_layer_norm
            else None
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="dropout")
        self.classifier = keras.layers.Dense(self.num_classes, dtype=self.dtype_policy, name="classifier")

    def build(self, tokens_shape):
        tokens_shape = check_tokens_shape("tokens", tokens_shape)
        if (
            self.pooling == "mean"
            and tokens_shape[1] is not None
            and tokens_shape[1] <= self.num_prefix_tokens
        ):
            raise ValueError(
                f"`pooling`='mean' averages the patch tokens, but `tokens` has "
                f"{tokens_shape[1]} token(s) (shape {tokens_shape})."
            )
        pooled_shape = (tokens_shape[0], tokens_shape[-1])
        if self.layer_norm is not None:
            self.layer_norm.build(pooled_shape)
        self.classifier.build(pooled_shape)
        self.built = True

    def call(self, tokens, training=None):
        tokens = keras.ops.cast(tokens, self.compute_dtype)  # float32 (see the class docstring)
        if self.pooling == "class_token":
            pooled = tokens[:, 0, :]
        else:
            pooled = keras.ops.mean(tokens[:, self.num_prefix_tokens :, :], axis=1)
        # Normalising the pooled vector equals normalising the token first
        # (LayerNorm is per token) and skips the other tokens.
        if self.layer_norm is not None:
            pooled = self.layer_norm(pooled)
        pooled = self.dropout_layer(pooled, training=training)
        return self.classifier(pooled)

    def get_config(self):
        config = super().get_config()
        config.update({"pooling": self.pooling, "use_layer_norm": self.use_layer_norm})
        return config


@keras.saving.register_keras_serializable(package="keras_dmpo")
class CovarianceExitHead(ExitHead):
    """Early exit predictor: covariance pooling fused with a linear head.

    The covariance branch is ``CovariancePooling`` (LayerNorm, Dense to
    ``covariance_dim`` on the patch tokens, centred covariance, Newton-Schulz
    square root, upper triangle), dropout and a Dense to the classes. The
    linear branch is LayerNorm + Dense on the class token. ``fusion`` combines
    the two logits. The whole head runs in float32 (also under a mixed
    precision policy) and returns float32 logits.

    At the demo scale (width 128, 50 tokens, 10 classes) the default head
    (``covariance_dim=32``, ``iterations=5``) costs about 1.3 MFLOP, about 6%
    of one ViT block (21 MFLOP); see docs/layers.md.

    Args:
        num_classes: int >= 1, number of logits.
        covariance_dim: int >= 1, reduced dimension ``d``, at most the token
            width; the covariance feature has ``d (d + 1) / 2`` entries.
        iterations: int >= 1, Newton-Schulz iterations (5: ~13% error of the
            matrix root, 8: ~1%).
        dropout: float, dropout rate on the covariance feature.
        fusion: ``"mean"`` (default, mean of the two logits), ``"sum"``, or
            ``"covariance_only"`` (no linear branch).
        epsilon: float, ridge added to the covariance.
        num_prefix_tokens: int >= 1, special tokens before the patch grid;
            the covariance reads the patch tokens only.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Call arguments:
        tokens: ``(batch, num_prefix_tokens + patches, width)``, class
            token first.
        training: bool, whether dropout is active.

    Returns:
        ``(batch, num_classes)`` float32 logits.

    Example:
    >>> head = CovarianceExitHead(num_classes=10, covariance_dim=16)
    >>> tuple(head(np.random.rand(2, 17, 32)).shape)
    (2, 10)
    """

    def __init__(
        self,
        num_classes,
        covariance_dim=layer_defaults.COVARIANCE_DIM,
        iterations=layer_defaults.COVARIANCE_ITERATIONS,
        dropout=0.0,
        fusion=layer_defaults.COVARIANCE_FUSION,
        epsilon=1e-5,
        num_prefix_tokens=1,
        **kwargs,
    ):
        super().__init__(**float32_policy_kwargs(kwargs))
        self._init_common(num_classes, dropout, num_prefix_tokens)
        self.covariance_dim = check_positive_int("covariance_dim", covariance_dim)
        self.iterations = check_positive_int("iterations", iterations)
        self.fusion = check_choice("fusion", fusion, FUSIONS)
        self.epsilon = float(epsilon)
        self.pooling = CovariancePooling(
            covariance_dim=self.covariance_dim,
            iterations=self.iterations,
            epsilon=self.epsilon,
            num_prefix_tokens=self.num_prefix_tokens,
            dtype="float32",
            name="covariance_pooling",
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype="float32", name="dropout")
        self.classifier = keras.layers.Dense(self.num_classes, dtype="float32", name="classifier")
        self.linear_head = (
            None
            if self.fusion == "covariance_only"
            else LinearExitHead(self.num_classes, dtype="float32", name="linear_head")
        )

    def build(self, tokens_shape):
        tokens_shape = check_tokens_shape("tokens", tokens_shape)
        if self.covariance_dim > tokens_shape[-1]:
            raise ValueError(
                f"`covariance_dim` must be at most the token width "
                f"{tokens_shape[-1]}; got covariance_dim={self.covariance_dim}."
            )
        self.pooling.build(tokens_shape)
        self.classifier.build((tokens_shape[0], self.pooling.output_dim))
        if self.linear_head is not None:
            self.linear_head.build(tokens_shape)
        self.built = True

    def call(self, tokens, training=None):
        tokens = keras.ops.cast(tokens, "float32")
        features = self.dropout_layer(self.pooling(tokens), training=training)
        logits = self.classifier(features)
        if self.linear_head is None:
            return logits
        linear_logits = self.linear_head(tokens, training=training)
        if self.fusion == "sum":
            return logits + linear_logits
        return 0.5 * (logits + linear_logits)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "covariance_dim": self.covariance_dim,
                "iterations": self.iterations,
                "fusion": self.fusion,
                "epsilon": self.epsilon,
            }
        )
        return config
