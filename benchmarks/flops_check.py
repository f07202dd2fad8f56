"""Analytic FLOPs (keras_dmpo.inference.flops) against XLA's measured count.

Measured = ``flops + transcendentals`` of
``jax.jit(f).lower(...).compile().cost_analysis()`` for ONE image, with the
weights passed as arguments (``stateless_call``) so XLA cannot fold them.
XLA counts a dot as 2*M*N*K (a multiply-add = 2 FLOPs, our convention) and
reports exp/rsqrt/erf apart as "transcendentals": we add them, since the
analytic counter costs every elementwise op 1 FLOP.

What is measured at each scale:
- ``vit_block``: one keras-hub ``ViTEncoderBlock`` (random weights).
- ``vit_backbone``: a whole keras-hub ``ViTBackbone``.
- ``*_ref``: small jax.numpy references (``xla_references.py``, beside
  this script), independent of the keras_dmpo layers (covariance head with
  Newton-Schulz, adapters, head).
- ``layers.*``: the keras_dmpo layers themselves, when importable.
- ``<family>.*`` (``--family``): a whole keras-hub DeiT or DINOv2 backbone,
  and a ``DMPOClassifier`` on it (every exit: adapters, bypasses, covariance
  heads, ImageNet normalisation for DINOv2) and its single-exit model,
  against ``EarlyExitModel.flops_per_exit[-1]`` and ``full_model_flops``.

Run (JAX backend is forced):
    .venv/bin/python benchmarks/flops_check.py              # demo + vit_b16
    .venv/bin/python benchmarks/flops_check.py --scale tiny --json
    .venv/bin/python benchmarks/flops_check.py --family deit --family dinov2 --scale tiny
    .venv/bin/python benchmarks/flops_check.py --family dinov2 --scale dinov2_s112
"""

import argparse
import json
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Beside this script (its folder is first on sys.path when it runs).
from xla_references import (  # noqa: E402
    adapter_ref,
    adapter_ref_weights,
    covariance_head_ref,
    covariance_ref_weights,
    linear_head_ref,
)

SCALES = {
    # tests/conftest.py's tiny ViT with 2 blocks (fewer XLA compiles in tests).
    "tiny": dict(
        image_shape=(32, 32, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
        covariance_dim=16,
        iterations=5,
        bottleneck=8,
    ),
    # Small enough for the test suite, wide enough that matmuls dominate as
    # in real models (tests/test_backbone_families.py checks 1% here).
    "family_small": dict(
        image_shape=(56, 56, 3),
        patch_size=7,
        num_layers=2,
        num_heads=3,
        hidden_dim=96,
        mlp_dim=384,
        num_classes=10,
        covariance_dim=16,
        iterations=5,
        bottleneck=8,
    ),
    # keras_dmpo.demo's ViT.
    "demo": dict(
        image_shape=(28, 28, 3),
        patch_size=4,
        num_layers=8,
        num_heads=4,
        hidden_dim=128,
        mlp_dim=256,
        num_classes=10,
        covariance_dim=32,
        iterations=5,
        bottleneck=16,
    ),
    # DINOv2-S/14 at 112 px (random weights), Fashion-MNIST's 10 classes.
    "dinov2_s112": dict(
        image_shape=(112, 112, 3),
        patch_size=14,
        num_layers=12,
        num_heads=6,
        hidden_dim=384,
        mlp_dim=1536,
        num_classes=10,
        covariance_dim=64,
        iterations=5,
        bottleneck=32,
    ),
    # ViT-B/16 at 224 (random weights), 1000 classes.
    "vit_b16": dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        num_classes=1000,
        covariance_dim=64,
        iterations=5,
        bottleneck=64,
    ),
}


def measured_flops(fn, *args):
    """``flops + transcendentals`` of the XLA-compiled ``fn(*args)``."""
    import jax

    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
        cost = cost[0]
    return float(cost.get("flops", 0.0)) + float(cost.get("transcendentals", 0.0))


def measure_layer(layer, *inputs):
    """Measured FLOPs of a built Keras layer, weights passed as arguments."""
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def fn(trainable, non_trainable, *inputs):
        outputs, _ = layer.stateless_call(trainable, non_trainable, *inputs)
        return outputs

    return measured_flops(fn, trainable, non_trainable, *inputs)


# --- the check --------------------------------------------------------------


def check_scale(name, include_layers=True, lean=False):
    """Rows ``{"scale", "what", "analytic", "measured", "diff_percent"}``.

    ``lean``: only the block, the backbone and the covariance head reference
    (what tests/test_flops.py checks; fewer XLA compilations).
    """
    import jax.numpy as jnp
    import keras
    import keras_hub
    import numpy as np

    from keras_dmpo.inference import flops as F

    s = SCALES[name]
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=s["image_shape"],
        patch_size=s["patch_size"],
        num_layers=s["num_layers"],
        num_heads=s["num_heads"],
        hidden_dim=s["hidden_dim"],
        mlp_dim=s["mlp_dim"],
    )
    t = F.vit_num_tokens(s["image_shape"], s["patch_size"])
    d, c, cd, it, b = (
        s["hidden_dim"],
        s["num_classes"],
        s["covariance_dim"],
        s["iterations"],
        s["bottleneck"],
    )
    grid = int(round((t - 1) ** 0.5))
    tokens = jnp.asarray(np.random.default_rng(0).normal(size=(1, t, d)).astype("float32"))
    images = jnp.asarray(
        np.random.default_rng(0).uniform(size=(1,) + tuple(s["image_shape"])).astype("float32")
    )
    block_flops = F.vit_block_flops(t, d, s["mlp_dim"], s["num_heads"])
    rows = []

    def row(what, analytic, measured):
        rows.append(
            {
                "scale": name,
                "what": what,
                "analytic": int(analytic),
                "measured": int(measured),
                "diff_percent": 100.0 * (analytic - measured) / measured,
            }
        )

    block = backbone.get_layer("vit_encoder").encoder_layers[0]
    row("vit_block", block_flops, measure_layer(block, tokens))
    backbone_analytic = (
        F.vit_embedding_flops(s["image_shape"], s["patch_size"], d)
        + s["num_layers"] * block_flops
        + F.layer_norm_flops(t, d)
    )
    row("vit_backbone", backbone_analytic, measure_layer(backbone, images))

    cw = covariance_ref_weights(d, cd, c)
    row(
        f"covariance_head_ref(d={cd},it={it})",
        F.covariance_head_flops(t, d, cd, it, c),
        measured_flops(lambda x, w: covariance_head_ref(x, w, it), tokens, cw),
    )
    if lean:
        return rows
    aw = adapter_ref_weights(d, b)
    row(
        f"parallel_adapter_ref(b={b})",
        F.parallel_adapter_flops(t, d, b),
        measured_flops(lambda x, w: adapter_ref(x, w), tokens, aw),
    )
    row(
        f"bypass_adapter_ref(b={b})",
        F.bypass_adapter_flops(t, d, b),
        measured_flops(lambda x, w: adapter_ref(x, w, grid), tokens, aw),
    )
    row("linear_head_ref", F.linear_head_flops(d, c), measured_flops(linear_head_ref, tokens, cw))

    if include_layers:
        try:
            from keras_dmpo.layers.bypass import BypassAdapter
            from keras_dmpo.layers.exit_heads import CovarianceExitHead, LinearExitHead
            from keras_dmpo.layers.parallel_adapter import ParallelAdapter
        except ImportError as error:  # layers not there yet: skip these rows
            print(f"keras_dmpo layers not measured: {error}", file=sys.stderr)
        else:
            head = CovarianceExitHead(c, covariance_dim=cd, iterations=it)
            head.build(tokens.shape)
            row(
                f"layers.CovarianceExitHead(d={cd},it={it})",
                F.covariance_head_flops(t, d, cd, it, c),
                measure_layer(head, tokens),
            )
            head = LinearExitHead(c)
            head.build(tokens.shape)
            row("layers.LinearExitHead", F.linear_head_flops(d, c), measure_layer(head, tokens))
            adapter = ParallelAdapter(b)
            adapter.build(tokens.shape, tokens.shape)
            row(
                f"layers.ParallelAdapter(b={b})",
                F.parallel_adapter_flops(t, d, b),
                measure_layer(adapter, tokens, tokens),
            )
            bypass = BypassAdapter(b)
            bypass.build(tokens.shape)
            row(
                f"layers.BypassAdapter(b={b})", F.bypass_adapter_flops(t, d, b), measure_layer(bypass, tokens)
            )
    return rows


def build_family_backbone(family, s):
    """A random keras-hub DeiT or DINOv2 backbone of scale ``s``."""
    import keras_hub

    if family == "deit":
        return keras_hub.models.DeiTBackbone(
            image_shape=s["image_shape"],
            patch_size=s["patch_size"],
            num_layers=s["num_layers"],
            num_heads=s["num_heads"],
            hidden_dim=s["hidden_dim"],
            intermediate_dim=s["mlp_dim"],
        )
    if family == "dinov2":
        side = s["image_shape"][0]
        return keras_hub.models.DINOV2Backbone(
            patch_size=s["patch_size"],
            num_layers=s["num_layers"],
            hidden_dim=s["hidden_dim"],
            num_heads=s["num_heads"],
            intermediate_dim=s["mlp_dim"],
            image_shape=s["image_shape"],
            position_embedding_shape=(2 * side, 2 * side, 3),
            num_register_tokens=s.get("registers", 0),
            use_mask_token=False,
        )
    raise ValueError(f"unknown family {family!r}")


def check_family(family, name):
    """Whole backbone and DMPO model of a DeiT/DINOv2 family vs XLA."""
    import keras
    import numpy as np

    from keras_dmpo import DMPOClassifier, EarlyExitModel
    from keras_dmpo.inference import flops as F

    s = dict(SCALES[name])
    if family == "dinov2" and name in ("tiny", "family_small"):
        s["registers"] = 2  # exercise register tokens at the tiny scale
    keras.utils.set_random_seed(0)
    backbone = build_family_backbone(family, s)
    model = DMPOClassifier(
        backbone=backbone,
        num_classes=s["num_classes"],
        covariance_dim=s["covariance_dim"],
        covariance_iterations=s["iterations"],
        bypass_dim=s["bottleneck"],
        adapter_dim=s["bottleneck"],
        input_normalization="imagenet" if family == "dinov2" else None,
    )
    ee = EarlyExitModel(model)
    stages = model.stages
    config = F.ExitCostConfig.from_stages(stages, s["num_classes"])
    plain = F.dmpo_flops_per_exit(config)
    backbone_analytic = plain.full_model_flops - F.linear_head_flops(
        stages.hidden_dim, s["num_classes"], False
    )
    images = np.random.default_rng(0).uniform(size=(1,) + tuple(s["image_shape"])).astype("float32")
    rows = []

    def row(what, analytic, measured):
        rows.append(
            {
                "scale": name,
                "what": f"{family}.{what}",
                "analytic": int(analytic),
                "measured": int(measured),
                "diff_percent": 100.0 * (analytic - measured) / measured,
            }
        )

    row(
        "backbone",
        backbone_analytic,
        measure_layer(backbone, {"images": images} if family == "dinov2" else images),
    )
    row("dmpo_all_exits", ee.flops_per_exit[-1], measure_layer(model, images))
    single = model.build_single_exit_model()
    # + softmax of the single-exit model's output
    row(
        "dmpo_single_exit",
        ee.full_model_flops + F.SOFTMAX_FLOPS * s["num_classes"],
        measure_layer(single, images),
    )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale",
        action="append",
        choices=sorted(SCALES),
        help="scales to check (repeatable); default demo and vit_b16",
    )
    parser.add_argument("--no-layers", action="store_true", help="skip the keras_dmpo layers rows")
    parser.add_argument("--json", action="store_true", help="print JSON rows only")
    parser.add_argument(
        "--lean", action="store_true", help="only the block, backbone and covariance head reference"
    )
    parser.add_argument(
        "--family",
        action="append",
        choices=["deit", "dinov2"],
        help="check these families' backbones and DMPO models instead (repeatable)",
    )
    args = parser.parse_args(argv)
    rows = []
    for scale in args.scale or ["demo", "vit_b16"]:
        start = time.perf_counter()
        if args.family:
            for family in args.family:
                rows += check_family(family, scale)
        else:
            rows += check_scale(scale, include_layers=not args.no_layers, lean=args.lean)
        if not args.json:
            print(f"# {scale}: measured in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
        return
    print("| scale | what | analytic FLOPs | measured FLOPs | analytic - measured |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['scale']} | {r['what']} | {r['analytic']:,} | {r['measured']:,} | "
            f"{r['diff_percent']:+.2f}% |"
        )


if __name__ == "__main__":
    main()
