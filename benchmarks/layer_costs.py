"""Cost of the DMPO layers against one ViT block: parameters, FLOPs, time.

Usage (the table in docs/layers.md was made with):

    KERAS_BACKEND=tensorflow python benchmarks/layer_costs.py

Analytic FLOPs count matmuls and convolutions only, a multiply-add = 2 FLOPs
(elementwise ops, LayerNorm, softmax and GELU are left out: a few percent;
keras_dmpo/inference/flops.py counts them too). With T tokens (1 + N patch
tokens), width D, MLP width M, C classes:

    ViT block        8 T D^2 + 4 T^2 D + 4 T D M
                     (QKV + output projections, QK^T and AV, two MLP Dense)
    LinearExitHead   2 D C
    CovarianceExitHead (reduced dim d, n Newton-Schulz iterations)
                     2 N D d              Dense D -> d on the patch tokens
                   + 2 N d^2              centred covariance X^T X
                   + (3n - 3) 2 d^3       folded coupled Newton-Schulz (n >= 2)
                   + 2 (d(d+1)/2) C       classifier on the upper triangle
                   + 2 D C                fused linear head on the class token
    BypassAdapter (bottleneck b, k x k depthwise conv)
                     4 T D b + 2 N k^2 b  (Down + Up, conv; "same" border taps
                                           counted as full)

Measured time: median of ``--repeats`` calls of a compiled forward pass
(``tf.function`` on TensorFlow, ``jax.jit`` on JAX, eager ``no_grad`` on
torch) at batch ``--batch``, one process, after a warm-up call. The machine
is shared, so small times are noisy; compare ratios, not absolute values.

``--litert`` (TensorFlow backend) adds the LiteRT time of the same layer
converted with TFLITE_BUILTINS only, at batch 1, single thread: what a phone
runs, without TensorFlow's per-op dispatch cost.

Also prints the Newton-Schulz relative error (Frobenius) against
``scipy.linalg.sqrtm`` for several iteration counts.
"""

import argparse
import statistics
import time

import keras
import numpy as np

from keras_dmpo.layers import BypassAdapter, CovarianceExitHead, LinearExitHead

# name, width D, tokens T, heads, MLP width M, image size, patch, classes
CONFIGS = [
    ("test ViT", 32, 17, 2, 64, 32, 8, 10),
    ("demo", 128, 50, 4, 512, 28, 4, 10),
    ("ViT-Ti/16", 192, 197, 3, 768, 224, 16, 1000),
    ("ViT-S/16", 384, 197, 6, 1536, 224, 16, 1000),
    ("ViT-B/16", 768, 197, 12, 3072, 224, 16, 1000),
]


def block_flops(t, d, m):
    return 8 * t * d * d + 4 * t * t * d + 4 * t * d * m


def newton_schulz_matmuls(n):
    return 1 if n == 1 else 3 * n - 3


def covariance_head_flops(t, d_in, c, d, n):
    patches = t - 1
    return (
        2 * patches * d_in * d
        + 2 * patches * d * d
        + newton_schulz_matmuls(n) * 2 * d**3
        + 2 * (d * (d + 1) // 2) * c
        + 2 * d_in * c
    )


def linear_head_flops(d_in, c):
    return 2 * d_in * c


def bypass_flops(t, d_in, b, k=3):
    return 4 * t * d_in * b + 2 * (t - 1) * k * k * b


def vit_block(width, heads, mlp, image, patch):
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(image, image, 3),
        patch_size=patch,
        num_layers=1,
        num_heads=heads,
        hidden_dim=width,
        mlp_dim=mlp,
    )
    return backbone.get_layer("vit_encoder").encoder_layers[0]


def compiled_forward(layer, tokens):
    inputs = keras.Input(shape=tokens.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False))
        return model, lambda: fn(tokens).numpy()
    if backend == "jax":
        import jax

        state = [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]
        fn = jax.jit(lambda x: model.stateless_call(*state, x, training=False)[0])
        return model, lambda: np.asarray(fn(tokens))
    import torch

    def run():
        with torch.no_grad():
            return keras.ops.convert_to_numpy(model(tokens, training=False))

    return model, run


def litert_run(model, tokens):
    from keras_dmpo.export.tflite_convert import convert_to_tflite, make_interpreter

    interpreter = make_interpreter(model_content=convert_to_tflite(model), num_threads=1)
    runner = interpreter.get_signature_runner()
    name = next(iter(interpreter.get_signature_list().values()))["inputs"][0]
    sample = tokens[:1]
    return lambda: runner(**{name: sample})


def median_ms(run, repeats):
    run()  # warm-up: tracing / compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def newton_schulz_errors(iterations, dim=32, tokens=49, count=20, seed=0):
    """Mean relative error of the coupled NS root vs scipy's sqrtm (float64)."""
    import scipy.linalg

    rng = np.random.default_rng(seed)
    errors = {n: [] for n in iterations}
    eye = np.eye(dim)
    for _ in range(count):
        x = rng.normal(size=(tokens, dim))
        x -= x.mean(0)
        cov = x.T @ x / tokens + 1e-5 * eye
        exact = scipy.linalg.sqrtm(cov).real
        trace = np.trace(cov)
        for n in iterations:
            y, z = cov / trace, eye
            for _ in range(n):
                t = 0.5 * (3 * eye - z @ y)
                y, z = y @ t, t @ z
            approx = y * np.sqrt(trace)
            errors[n].append(np.linalg.norm(approx - exact) / np.linalg.norm(exact))
    return {n: (float(np.mean(e)), float(np.max(e))) for n, e in errors.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--covariance-dim", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--bypass-dim", type=int, default=16)
    parser.add_argument(
        "--litert", action="store_true", help="also time LiteRT at batch 1 (TensorFlow backend)"
    )
    parser.add_argument("--scales", nargs="*", default=None, help="names of the scales to run (default: all)")
    args = parser.parse_args()
    print(
        f"backend={keras.backend.backend()} batch={args.batch} "
        f"repeats={args.repeats} covariance_dim={args.covariance_dim} "
        f"iterations={args.iterations} bypass_dim={args.bypass_dim}\n"
    )
    litert = " LiteRT ms (batch 1) | % of block |" if args.litert else ""
    print(
        "| scale | D | T | layer | params | MFLOP/image | % of block FLOPs "
        "| ms/call | % of block time |" + litert
    )
    print("|---|---|---|---|---|---|---|---|---|" + "---|---|" * bool(litert))
    rng = np.random.default_rng(0)
    for name, width, tokens, heads, mlp, image, patch, classes in CONFIGS:
        if args.scales and name not in args.scales:
            continue
        x = rng.normal(size=(args.batch, tokens, width)).astype("float32")
        d = min(args.covariance_dim, width)
        rows = [
            ("ViT block", vit_block(width, heads, mlp, image, patch), block_flops(tokens, width, mlp)),
            (
                f"CovarianceExitHead (d={d}, n={args.iterations})",
                CovarianceExitHead(classes, covariance_dim=d, iterations=args.iterations),
                covariance_head_flops(tokens, width, classes, d, args.iterations),
            ),
            ("LinearExitHead", LinearExitHead(classes), linear_head_flops(width, classes)),
            (
                f"BypassAdapter (b={args.bypass_dim})",
                BypassAdapter(args.bypass_dim),
                bypass_flops(tokens, width, args.bypass_dim),
            ),
        ]
        block_ms = None
        for label, layer, flops in rows:
            model, run = compiled_forward(layer, x)
            ms = median_ms(run, args.repeats)
            lite_ms = median_ms(litert_run(model, x), args.repeats) if args.litert else None
            if block_ms is None:
                block_ms, block_fl, block_lite = ms, flops, lite_ms
            extra = f" {lite_ms:.3f} | {100 * lite_ms / block_lite:.0f}% |" if args.litert else ""
            print(
                f"| {name} | {width} | {tokens} | {label} | "
                f"{model.count_params():,} | {flops / 1e6:.3f} | "
                f"{100 * flops / block_fl:.1f}% | {ms:.3f} | "
                f"{100 * ms / block_ms:.0f}% |" + extra,
                flush=True,
            )
    print(
        "\nNewton-Schulz relative error vs scipy.linalg.sqrtm "
        "(20 trace-normalised covariances of 49 Gaussian tokens, float64):"
    )
    print("| iterations | d=32 mean | d=32 max | d=64 mean | d=64 max |")
    print("|---|---|---|---|---|")
    iterations = (3, 5, 8, 10)
    e32, e64 = newton_schulz_errors(iterations, 32), newton_schulz_errors(iterations, 64)
    for n in iterations:
        print(
            f"| {n} | {100 * e32[n][0]:.2f}% | {100 * e32[n][1]:.2f}% | "
            f"{100 * e64[n][0]:.2f}% | {100 * e64[n][1]:.2f}% |"
        )


if __name__ == "__main__":
    main()
