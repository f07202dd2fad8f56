"""XLA-measured vs analytic FLOPs of whole DMPOClassifiers built with
non-default options (run by tests/test_flops.py in a KERAS_BACKEND=jax
subprocess; prints one JSON list of rows).

Measured per image: ``flops + transcendentals`` of the compiled model at
batch 2 minus batch 1, with the weights passed as arguments
(``stateless_call``) so XLA cannot fold them. The difference leaves out
what a call computes once whatever the batch (LoRA merging its factors
into the kernels), which is no per-image cost.

The pixel normalisation (2 FLOPs per input value) is below the noise of a
whole model, so the ``input_normalization`` row compares what it adds to
stage 1: measured with minus without, against the counter's difference.

Run: KERAS_BACKEND=jax .venv/bin/python tests/xla_flops_models.py [variant ...]
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

# name -> (backbone family, DMPOClassifier options, also check the stage models)
VARIANTS = {
    "defaults": ("vit", dict(), True),
    "small_heads": (
        "vit",
        dict(exits=[1, 3], bypass_dim=4, covariance_dim=8, covariance_iterations=2, adapter_dim=4),
        False,
    ),
    "lora_all_covariance": (
        "vit",
        dict(exits=[1, 2], peft="lora", lora_rank=4, covariance_exits="all", covariance_iterations=3),
        False,
    ),
    "plain_heads_only_imagenet": (
        "vit",
        dict(peft=None, covariance_exits="none", use_bypass=False, input_normalization="imagenet"),
        False,
    ),
    "listed_covariance_custom_normalization": (
        "vit",
        dict(
            exits=[1, 2, 3],
            covariance_exits=[2],
            covariance_dim=12,
            covariance_iterations=1,
            input_normalization={"mean": 0.5, "std": 0.25},
        ),
        False,
    ),
    "dinov2_registers": ("dinov2", dict(exits=[1, 3], covariance_exits="all", bypass_dim=8), True),
    "deit_no_bypass": ("deit", dict(exits=[2], use_bypass=False, covariance_dim=16), False),
}


def per_image_flops(model, image_shape):
    """XLA's ``flops + transcendentals`` of one more image (batch 2 - batch 1)."""
    import jax
    import numpy as np

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def fn(trainable, non_trainable, inputs):
        outputs, _ = model.stateless_call(trainable, non_trainable, inputs)
        return outputs

    counts = []
    for batch in (1, 2):
        inputs = np.random.default_rng(0).uniform(size=(batch,) + tuple(image_shape)).astype("float32")
        cost = jax.jit(fn).lower(trainable, non_trainable, inputs).compile().cost_analysis()
        if isinstance(cost, (list, tuple)):  # older jax: one dict per device
            cost = cost[0]
        counts.append(float(cost.get("flops", 0.0)) + float(cost.get("transcendentals", 0.0)))
    return counts[1] - counts[0]


def build(family, options):
    import keras
    from conftest import build_tiny_backbone

    from keras_dmpo import DMPOClassifier

    backbone = build_tiny_backbone(family, seed=0)
    keras.utils.set_random_seed(1)
    return DMPOClassifier(backbone=backbone, num_classes=5, **options)


def row(variant, what, analytic, measured):
    return {
        "variant": variant,
        "what": what,
        "analytic": int(analytic),
        "measured": int(measured),
        "diff_percent": 100.0 * (analytic - measured) / measured,
    }


def check_normalization():
    """What ``input_normalization`` adds to stage 1, measured and counted."""
    from keras_dmpo.inference import flops as F

    measured, analytic = [], []
    for normalization in (None, "imagenet"):
        model = build("vit", dict(input_normalization=normalization))
        stage = model.build_stage_models(probabilities=True)[0]
        measured.append(per_image_flops(stage, model.image_shape))
        analytic.append(F.flops_of(model).stage_flops[0])
    return [
        row("input_normalization", "stage_1_difference", analytic[1] - analytic[0], measured[1] - measured[0])
    ]


def check_variant(name):
    from keras_dmpo.inference import flops as F

    if name == "input_normalization":
        return check_normalization()
    family, options, with_stages = VARIANTS[name]
    model = build(family, options)
    cost = F.flops_of(model)
    softmax = F.SOFTMAX_FLOPS * model.num_classes
    rows = []

    def add(what, analytic, measured):
        rows.append(row(name, what, analytic, measured))

    add("all_exits", cost.flops_per_exit[-1], per_image_flops(model, model.image_shape))
    add(
        "single_exit",
        cost.full_model_flops + softmax,
        per_image_flops(model.build_single_exit_model(), model.image_shape),
    )
    if with_stages:
        token_shape = model.stage_plan.token_shape
        for k, stage in enumerate(model.build_stage_models(probabilities=True)):
            shape = model.image_shape if k == 0 else token_shape
            add(f"stage_{k + 1}", cost.stage_flops[k] + softmax, per_image_flops(stage, shape))
    return rows


def main(argv):
    names = argv or list(VARIANTS) + ["input_normalization"]
    rows = []
    for name in names:
        rows += check_variant(name)
    print(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
