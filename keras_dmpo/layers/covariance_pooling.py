"""Second-order (covariance) pooling with a Newton-Schulz matrix square root.

iSQRT-COV style: the covariance is trace-normalised, its square root is
approximated by a fixed number of coupled Newton-Schulz iterations (matmuls
and elementwise ops only, so the graph converts to TFLITE_BUILTINS; sqrtm,
SVD and eig are not builtins), then the trace is put back.

Newton-Schulz relative error (Frobenius) against ``scipy.linalg.sqrtm`` on
trace-normalised covariances of 49 random Gaussian tokens in 32 dims (the
demo scale), mean of 20 matrices: 3 iterations 39%, 5 iterations 13%,
8 iterations 1.2%, 10 iterations 0.05% (see docs/layers.md). The default of
5 follows iSQRT-COV, whose accuracy with 3-5 iterations matched the exact
root: the head is learned on top of the approximation, and every iteration
costs ``6 d^3`` FLOPs.
"""

import keras
import numpy as np

from keras_dmpo import layer_defaults
from keras_dmpo.layers._checks import check_positive_int, check_prefix_tokens, check_tokens_shape


def float32_policy_kwargs(kwargs):
    """Force a float32 dtype policy (float64 is kept): the layers that call it
    compute in float32 under any policy, ``mixed_bfloat16`` and
    ``mixed_float16`` included, and return float32.

    Why: the covariance sums squares over the patch tokens (float16 tops out
    at 65504), its ``epsilon`` ridge (1e-5) vanishes next to O(1) entries in
    bfloat16 (8-bit mantissa) and is subnormal in float16, and the
    Newton-Schulz iteration and the exits' softmax / log-softmax want float32
    inputs. The exit heads are a pooled vector or a ``d x d`` matrix per
    image, so float32 costs little next to the blocks.
    """
    dtype = kwargs.get("dtype")
    policy = keras.dtype_policies.get(dtype) if dtype is not None else None
    if policy is None or policy.compute_dtype not in ("float32", "float64"):
        kwargs["dtype"] = "float32"
    return kwargs


def newton_schulz_sqrt(matrices, iterations=layer_defaults.COVARIANCE_ITERATIONS):
    """Approximate square roots of trace-normalised SPD matrices.

    Coupled Newton-Schulz iteration: ``Y_0 = A``, ``Z_0 = I``,
    ``T = (3I - Z Y) / 2``, ``Y <- Y T``, ``Z <- T Z``; ``Y`` tends to
    ``A^(1/2)`` when the eigenvalues of ``A`` lie in ``(0, 1]`` (true after
    dividing by the trace). The first step (``Z = I``) and the unused last
    ``Z`` update are folded away: ``3 * iterations - 3`` matmuls in all
    (one for a single iteration).

    Args:
        matrices: ``(..., d, d)`` tensor of SPD matrices with trace 1.
        iterations: int >= 1, number of iterations.

    Returns:
        ``(..., d, d)`` tensor, the approximate square roots.
    """
    iterations = check_positive_int("iterations", iterations)
    ops = keras.ops
    dim = matrices.shape[-1]
    identity3 = 3.0 * ops.eye(dim, dtype=matrices.dtype)
    t = 0.5 * (identity3 - matrices)
    y = ops.matmul(matrices, t)
    z = t
    for step in range(1, iterations):
        t = 0.5 * (identity3 - ops.matmul(z, y))
        if step < iterations - 1:
            y, z = ops.matmul(y, t), ops.matmul(t, z)
        else:
            y = ops.matmul(y, t)
    return y


def upper_triangle_indices(dim):
    """Flat indices of the upper triangle (diagonal included) of a d x d matrix."""
    return [row * dim + col for row in range(dim) for col in range(row, dim)]


@keras.saving.register_keras_serializable(package="keras_dmpo")
class CovariancePooling(keras.layers.Layer):
    """Covariance pooling of patch tokens: LayerNorm, reduce, cov, sqrt, triangle.

    Steps: LayerNorm; Dense ``width -> covariance_dim`` on the patch tokens (the class
    token is excluded); centred covariance ``X^T X / N`` over the ``N`` patch
    tokens; ``+ epsilon * I`` (keeps the trace and the gradients finite when
    the covariance is rank-deficient or zero); division by the trace;
    ``iterations`` Newton-Schulz steps (``newton_schulz_sqrt``); times
    ``sqrt(trace)``; the upper triangle as a vector of ``d (d + 1) / 2``.

    Always computed in float32, also under a ``mixed_bfloat16`` or
    ``mixed_float16`` policy (its policy is replaced by float32, the inputs
    are cast, the output is float32). Newton-Schulz relative error vs
    the exact root at the default 5 iterations and covariance_dim 32: about 13%
    (8 iterations: 1.2%); see the module docstring.

    Args:
        covariance_dim: int >= 1, reduced dimension ``d`` (at most the token
            width); the classifier's and ``CovarianceHead``'s ``covariance_dim``.
        iterations: int >= 1, Newton-Schulz iterations.
        epsilon: float, ridge added to the covariance before normalising.
        num_prefix_tokens: int >= 1, special tokens before the patch grid
            (class token, DeiT's distillation token, DINOv2's registers);
            they are left out of the covariance.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Call arguments:
        tokens: ``(batch, num_prefix_tokens + patches, width)``, class
            token first.

    Returns:
        ``(batch, d * (d + 1) // 2)`` float32 tensor.

    Example:
    >>> pooling = CovariancePooling(covariance_dim=16, iterations=5)
    >>> tuple(pooling(np.random.rand(2, 17, 32)).shape)  # 16 * 17 / 2 features
    (2, 136)
    """

    def __init__(
        self,
        covariance_dim=layer_defaults.COVARIANCE_DIM,
        iterations=layer_defaults.COVARIANCE_ITERATIONS,
        epsilon=1e-5,
        num_prefix_tokens=1,
        **kwargs,
    ):
        super().__init__(**float32_policy_kwargs(kwargs))
        self.covariance_dim = check_positive_int("covariance_dim", covariance_dim)
        self.num_prefix_tokens = check_prefix_tokens(num_prefix_tokens)
        self.iterations = check_positive_int("iterations", iterations)
        self.epsilon = float(epsilon)
        if not self.epsilon > 0:
            raise ValueError(f"`epsilon` must be > 0; got epsilon={epsilon!r}.")
        self.layer_norm = keras.layers.LayerNormalization(epsilon=1e-6, dtype="float32", name="layer_norm")
        self.reduce = keras.layers.Dense(self.covariance_dim, dtype="float32", name="reduce")
        # Constant indices: TFLite sees one Gather for the triangle (and a
        # Mul + Sum with a constant identity for the trace), no diag/triu ops.
        self._triangle = np.asarray(upper_triangle_indices(self.covariance_dim), "int32")

    @property
    def output_dim(self):
        return self.covariance_dim * (self.covariance_dim + 1) // 2

    def build(self, tokens_shape):
        tokens_shape = check_tokens_shape("tokens", tokens_shape)
        if tokens_shape[1] is not None and tokens_shape[1] <= self.num_prefix_tokens:
            raise ValueError(
                f"`tokens` has {tokens_shape[1]} tokens, but the first "
                f"num_prefix_tokens={self.num_prefix_tokens} are not patches: "
                "no patch token is left for the covariance."
            )
        width = tokens_shape[-1]
        if self.covariance_dim > width:
            raise ValueError(
                f"`covariance_dim` must be at most the token "
                f"width {width}; got covariance_dim={self.covariance_dim}."
            )
        self.layer_norm.build(tokens_shape)
        self.reduce.build(tokens_shape)
        self.built = True

    def call(self, tokens):
        ops = keras.ops
        x = self.layer_norm(ops.cast(tokens, "float32"))
        x = self.reduce(x[:, self.num_prefix_tokens :, :])  # patch tokens only
        num_tokens = ops.cast(ops.shape(x)[1], "float32")
        x = x - ops.mean(x, axis=1, keepdims=True)
        cov = ops.matmul(ops.transpose(x, (0, 2, 1)), x) / num_tokens
        identity = ops.eye(self.covariance_dim, dtype="float32")
        cov = cov + self.epsilon * identity
        trace = ops.sum(cov * identity, axis=(1, 2), keepdims=True)
        root = newton_schulz_sqrt(cov / trace, self.iterations) * ops.sqrt(trace)
        flat = ops.reshape(root, (-1, self.covariance_dim * self.covariance_dim))
        return ops.take(flat, self._triangle, axis=1)

    def compute_output_shape(self, tokens_shape):
        return (tokens_shape[0], self.output_dim)

    @classmethod
    def from_config(cls, config):
        # Saved before the size was named like the classifier's option.
        config = dict(config)
        if "dim" in config:
            config["covariance_dim"] = config.pop("dim")
        return cls(**config)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "covariance_dim": self.covariance_dim,
                "iterations": self.iterations,
                "epsilon": self.epsilon,
                "num_prefix_tokens": self.num_prefix_tokens,
            }
        )
        return config
