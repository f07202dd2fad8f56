"""Small jax.numpy references of the DMPO parts, written independently of
``keras_dmpo.layers``, for ``flops_check.py``: the covariance head (with
coupled Newton-Schulz), the parallel and bypass adapters, the linear head.

XLA's cost analysis of these is compared with the analytic counter, so they
are written to be counted once: where XLA's CPU fusion would recompute an
intermediate inside two consumers (and count it twice), it is materialised.
"""


def _ln(x, gamma, beta, eps=1e-6):
    import jax.numpy as jnp

    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * gamma + beta


def covariance_head_ref(tokens, w, iterations):
    """LN, reduce, centre, cov, trace-normalised coupled NS, triangle, Dense;
    fused (mean) with LN + Dense on the class token."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    x = _ln(tokens, w["g"], w["b"])[:, 1:, :] @ w["reduce"] + w["reduce_b"]
    n, d = x.shape[1], x.shape[2]
    x = x - jnp.mean(x, axis=1, keepdims=True)
    cov = jnp.einsum("bnd,bne->bde", x, x) / n
    eye = jnp.eye(d, dtype=x.dtype)
    cov = cov + 1e-5 * eye
    trace = jnp.sum(cov * eye, axis=(1, 2), keepdims=True)
    # XLA's CPU fusion would otherwise recompute the covariance matmul inside
    # both operands of the first Newton-Schulz product (a compiler choice that
    # cost_analysis counts twice): materialise it once.
    a, trace = jax.lax.optimization_barrier((cov / trace, trace))
    # Coupled Newton-Schulz (T = (3I - ZY)/2, Y <- YT, Z <- TZ), with the
    # first step taken at Z = I and the last step's unused Z update dropped.
    t = 0.5 * (3.0 * eye - a)
    y, z = a @ t, t
    for step in range(1, iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y = y @ t
        if step < iterations - 1:
            z = t @ z
    root = y * jnp.sqrt(trace)
    # Upper triangle as a gather of constant flat indices. (Fancy indexing
    # root[:, rows, cols] lets XLA fuse, and count again, the last matmul.)
    rows, cols = np.triu_indices(d)
    features = jnp.take(root.reshape(-1, d * d), jnp.asarray(rows * d + cols), axis=1)
    cov_logits = features @ w["cls"] + w["cls_b"]
    cls = _ln(tokens[:, 0, :], w["g2"], w["b2"])
    lin_logits = cls @ w["lin"] + w["lin_b"]
    return 0.5 * (cov_logits + lin_logits)


def covariance_ref_weights(hidden_dim, covariance_dim, num_classes):
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    d, p = covariance_dim, covariance_dim * (covariance_dim + 1) // 2

    def rand(*shape):
        return jnp.asarray(rng.normal(size=shape).astype("float32") * 0.05)

    return {
        "g": rand(hidden_dim),
        "b": rand(hidden_dim),
        "reduce": rand(hidden_dim, d),
        "reduce_b": rand(d),
        "cls": rand(p, num_classes),
        "cls_b": rand(num_classes),
        "g2": rand(hidden_dim),
        "b2": rand(hidden_dim),
        "lin": rand(hidden_dim, num_classes),
        "lin_b": rand(num_classes),
    }


def adapter_ref(tokens, w, grid=None):
    """Parallel adapter (grid None) or bypass (depthwise 3x3 on the grid)."""
    import jax
    import jax.numpy as jnp

    hidden = tokens @ w["down"] + w["down_b"]
    if grid is None:
        hidden = jax.nn.gelu(hidden, approximate=False)
    else:
        # GELU per slice: one GELU feeding both slices is recomputed in each
        # consumer fusion by XLA's CPU compiler (counted twice).
        b = hidden.shape[-1]
        class_token = jax.nn.gelu(hidden[:, :1, :], approximate=False)
        patches = jax.nn.gelu(hidden[:, 1:, :], approximate=False)
        patches = patches.reshape(-1, grid, grid, b)
        patches = (
            jax.lax.conv_general_dilated(
                patches,
                w["dw"],
                (1, 1),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=b,
            )
            + w["dw_b"]
        )
        hidden = jnp.concatenate([class_token, patches.reshape(-1, grid * grid, b)], 1)
    return tokens + 0.1 * (hidden @ w["up"] + w["up_b"])


def adapter_ref_weights(hidden_dim, bottleneck):
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(1)

    def rand(*shape):
        return jnp.asarray(rng.normal(size=shape).astype("float32") * 0.05)

    return {
        "down": rand(hidden_dim, bottleneck),
        "down_b": rand(bottleneck),
        "up": rand(bottleneck, hidden_dim),
        "up_b": rand(hidden_dim),
        "dw": rand(3, 3, 1, bottleneck),
        "dw_b": rand(bottleneck),
    }


def linear_head_ref(tokens, w):
    return _ln(tokens[:, 0, :], w["g2"], w["b2"]) @ w["lin"] + w["lin_b"]
