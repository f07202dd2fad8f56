"""Analytic FLOPs counter: hand-checked formulas, per-exit bookkeeping, and a
measured check against XLA's cost analysis (in a KERAS_BACKEND=jax subprocess,
so it runs under every backend's pytest)."""

import json
import os
import subprocess
import sys

import pytest

from keras_dmpo.inference import flops as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(**overrides):
    config = dict(
        image_shape=(28, 28, 3),
        patch_size=4,
        num_layers=8,
        hidden_dim=128,
        mlp_dim=256,
        num_heads=4,
        num_classes=10,
        exits=tuple(range(1, 9)),
        head_kinds="covariance",
        bypass=True,
        bypass_bottleneck=16,
        adapter_bottleneck=16,
        covariance_dim=32,
        iterations=5,
    )
    config.update(overrides)
    return F.ExitCostConfig(**config)


def test_block_matmul_terms_by_hand():
    t, d, m, h = 50, 128, 256, 4
    matmuls = 4 * 2 * t * d * d + 2 * 2 * t * t * d + 2 * 2 * t * d * m
    elementwise = (
        2 * F.layer_norm_flops(t, d)
        + 4 * t * d
        + t * d  # q/k/v/o biases, query scale
        + F.SOFTMAX_FLOPS * h * t * t
        + t * m
        + t * d  # MLP biases
        + F.GELU_FLOPS * t * m
        + 2 * t * d  # residuals
    )
    assert F.vit_block_flops(t, d, m, h) == matmuls + elementwise


def test_layer_norm_and_embedding_by_hand():
    assert F.layer_norm_flops(3, 10) == 3 * (7 * 10 + 4)
    # 7x7 patches of 4x4x3 -> 128, bias, + position add on 50 tokens.
    expected = 2 * 49 * 48 * 128 + 49 * 128 + 50 * 128
    assert F.vit_embedding_flops((28, 28, 3), 4, 128) == expected
    assert F.vit_embedding_flops((28, 28), (4, 4), 128, num_channels=3) == expected


def test_newton_schulz_matmul_count():
    assert [F.newton_schulz_matmuls(n) for n in (1, 2, 3, 5, 8)] == [1, 3, 6, 12, 21]


def test_heads_and_adapters_by_hand():
    t, d, c, cd, it = 50, 128, 10, 32, 5
    head = F.covariance_head_flops(t, d, cd, it, c, fusion="covariance_only")
    # The dominant terms: reduce, covariance, Newton-Schulz, classifier.
    big = 2 * 49 * d * cd + 2 * 49 * cd * cd + 12 * 2 * cd**3 + 2 * (cd * 33 // 2) * c
    assert big < head < 1.1 * big
    fused = F.covariance_head_flops(t, d, cd, it, c, fusion="mean")
    assert fused - head == F.linear_head_flops(d, c) + 2 * c
    assert F.linear_head_flops(d, c, use_layer_norm=False) == 2 * d * c + c
    assert F.linear_head_flops(d, c, pooling="mean", num_tokens=t) == (
        49 * d + F.layer_norm_flops(1, d) + 2 * d * c + c
    )
    assert F.parallel_adapter_flops(t, d, 0) == 0
    assert F.bypass_adapter_flops(t, d, None) == 0
    # The bypass is the adapter plus the 3x3 depthwise conv on the 7x7 grid:
    # 19 in-grid (output, tap) pairs per axis with "same" padding.
    conv = 2 * 16 * 19 * 19 + 49 * 16
    assert F.bypass_adapter_flops(t, d, 16) == F.parallel_adapter_flops(t, d, 16) + conv


def test_demo_head_is_cheap_relative_to_a_block():
    # A head should cost <= 25% of a block at the demo scale, or the early
    # exits would eat the savings they bring.
    head = F.covariance_head_flops(50, 128, 32, 5, 10)
    assert head < 0.25 * F.vit_block_flops(50, 128, 256, 4)


def test_per_exit_bookkeeping():
    config = demo_config()
    result = F.dmpo_flops_per_exit(config)
    k = len(config.exits)
    assert len(result.stage_flops) == len(result.flops_per_exit) == len(result.head_flops) == k
    total = 0
    for stage, cumulative in zip(result.stage_flops, result.flops_per_exit):
        total += stage
        assert cumulative == total
    # The last exit pays for every early head and bypass on top of the full model.
    extras = sum(result.head_flops[:-1]) + sum(result.bypass_flops[:-1])
    assert result.flops_per_exit[-1] == result.full_model_flops + extras
    assert result.bypass_flops[-1] == 0
    assert result.head_flops[-1] == F.linear_head_flops(128, 10, use_layer_norm=False)
    block = F.vit_block_flops(50, 128, 256, 4) + F.parallel_adapter_flops(50, 128, 16)
    assert result.stage_flops[1] == block + result.head_flops[1] + result.bypass_flops[1]
    assert result.fractions[0] < 0.15  # first exit reaches a 25-30% budget
    assert result.to_dict()["full_model_flops"] == result.full_model_flops


def test_plain_multi_exit_and_sparse_exits():
    plain = F.dmpo_flops_per_exit(
        demo_config(head_kinds="linear", bypass=False, adapter_bottleneck=0, exits=(2, 5, 8))
    )
    backbone = (
        F.vit_embedding_flops((28, 28, 3), 4, 128)
        + 8 * F.vit_block_flops(50, 128, 256, 4)
        + F.layer_norm_flops(50, 128)
    )
    assert plain.full_model_flops == backbone + F.linear_head_flops(128, 10, False)
    assert plain.stage_flops[1] == 3 * F.vit_block_flops(50, 128, 256, 4) + F.linear_head_flops(128, 10)


def test_from_stages_duck_typed():
    class Stages:
        image_shape, patch_size, num_layers = (32, 32, 3), (8, 8), 4
        hidden_dim, mlp_dim, num_heads, exits = 32, 64, 2, (1, 2, 4)

    config = F.ExitCostConfig.from_stages(Stages(), num_classes=5)
    assert config.num_tokens == 17
    assert len(F.dmpo_flops_per_exit(config).flops_per_exit) == 3


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(exits=(1, 2)), "last exit must be block"),
        (dict(exits=(2, 1, 8)), "increasing"),
        (dict(head_kinds=("linear",) * 3), "head_kinds"),
        (dict(head_kinds=("covariance",) * 8), "last exit's head"),
        (dict(head_kinds=("quadratic",) * 7 + ("linear",)), "quadratic"),
        (dict(bypass=(True, False)), "bypass"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        F.dmpo_flops_per_exit(demo_config(**overrides))


def test_bad_arguments():
    with pytest.raises(ValueError, match="fusion"):
        F.covariance_head_flops(50, 128, 32, 5, 10, fusion="max")
    with pytest.raises(ValueError, match="num_tokens"):
        F.linear_head_flops(128, 10, pooling="mean")
    with pytest.raises(ValueError, match="1 prefix token\\(s\\) plus a 4x4 patch grid"):
        F.bypass_adapter_flops(20, 128, 16)
    with pytest.raises(ValueError, match="2 prefix token\\(s\\) plus a 3x6"):
        F.bypass_adapter_flops(21, 128, 16, num_prefix_tokens=2, grid_shape=(3, 6))


@pytest.fixture(scope="module")
def measured_rows():
    """XLA-measured vs analytic rows at the tiny scale (one subprocess)."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "flops_check.py"),
            "--scale",
            "tiny",
            "--lean",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.mark.backend_independent  # XLA counts in a KERAS_BACKEND=jax subprocess
def test_analytic_matches_xla_cost_analysis(measured_rows):
    """(a) one keras-hub ViT block, (b) a whole tiny ViTBackbone, (c) a
    jax.numpy covariance + Newton-Schulz head: within 5% of XLA's count."""
    whats = [row["what"] for row in measured_rows]
    assert whats[:2] == ["vit_block", "vit_backbone"]
    assert any(w.startswith("covariance_head_ref") for w in whats)
    for row in measured_rows:
        assert abs(row["diff_percent"]) < 5.0, row


# --- the counter reads a built model's own layers ---------------------------


def small_classifier(**options):
    from conftest import build_tiny_vit

    from keras_dmpo import DMPOClassifier

    return DMPOClassifier(backbone=build_tiny_vit(seed=0), num_classes=3, **options)


def test_flops_of_reads_the_layer_configs():
    model = small_classifier(
        exits=[1, 2], covariance_dim=8, covariance_iterations=2, bypass_dim=4, adapter_dim=6
    )
    cost = F.model_cost(model)
    assert [stage.num_blocks for stage in cost.stages] == [1, 1, 2]
    assert [stage.final_norm for stage in cost.stages] == [False, False, True]
    first = cost.stages[0]
    assert first.head["class_name"] == "CovarianceExitHead"
    assert (first.head["config"]["covariance_dim"], first.head["config"]["iterations"]) == (8, 2)
    assert first.bypass["config"]["bottleneck_dim"] == 4 and cost.stages[-1].bypass is None
    assert [a["config"]["bottleneck_dim"] for a in cost.stages[2].adapters] == [6, 6]
    # The hand-written description of the same model counts the same.
    described = F.ExitCostConfig.from_stages(
        model.stages,
        3,
        head_kinds=("covariance", "covariance", "linear"),
        bypass=True,
        bypass_bottleneck=4,
        adapter_bottleneck=6,
        covariance_dim=8,
        iterations=2,
    )
    assert F.flops_of(model) == F.dmpo_flops_per_exit(described)
    assert F.flops_of(model.stage_plan) == F.flops_of(cost) == F.flops_of(model)


def test_lora_and_normalization_costs():
    heads_only = F.flops_of(small_classifier(exits=[2], peft=None))
    # LoRA's factors are merged into the kernels once per call: no per-image cost.
    assert F.flops_of(small_classifier(exits=[2], peft="lora", lora_rank=2)) == heads_only
    normalized = F.flops_of(small_classifier(exits=[2], peft=None, input_normalization="imagenet"))
    assert normalized.stage_flops[0] - heads_only.stage_flops[0] == 2 * 32 * 32 * 3
    assert normalized.stage_flops[1:] == heads_only.stage_flops[1:]


def test_the_counter_imports_no_keras():
    code = (
        "import sys; from keras_dmpo.inference import flops; "
        "bad = [m for m in ('keras', 'keras_hub', 'tensorflow', 'jax', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_model_cost_errors():
    config = demo_config(exits=(4, 8))
    layout = config
    with pytest.raises(ValueError, match="No FLOPs formula for a Softmax layer"):
        F.layer_flops({"class_name": "Softmax", "config": {}}, layout)
    adapter = {"class_name": "ParallelAdapter", "config": {"bottleneck_dim": 4, "activation": "relu"}}
    with pytest.raises(
        ValueError, match="GELU activation only; got a ParallelAdapter with activation='relu'"
    ):
        F.layer_flops(adapter, layout)
    cost = config.to_model_cost()
    short = F.ModelCost(layout=layout, stages=cost.stages[:1])
    with pytest.raises(ValueError, match="run 4 blocks in all; the backbone has num_layers=8"):
        F.count_flops(short)
    with pytest.raises(ValueError, match="`model` must be a keras_dmpo DMPOClassifier or its StagePlan"):
        F.flops_of(object())


@pytest.fixture(scope="module")
def model_rows():
    """XLA-measured vs counted FLOPs of whole classifiers with non-default
    options (tests/xla_flops_models.py, one jax subprocess)."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "xla_flops_models.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.mark.backend_independent  # XLA counts in a KERAS_BACKEND=jax subprocess
def test_counter_matches_xla_for_non_default_options(model_rows):
    """Bypass, adapter and covariance sizes, Newton-Schulz iterations, LoRA,
    no trunk tuning, every covariance_exits form, input normalisation, DINOv2
    registers and DeiT: the whole model, its single-exit model and (for some)
    each stage model, within 5% of XLA's count."""
    variants = {row["variant"] for row in model_rows}
    assert len(variants) == 8, variants
    assert {"input_normalization", "lora_all_covariance", "dinov2_registers"} <= variants
    assert any(row["what"].startswith("stage_") for row in model_rows)
    for row in model_rows:
        assert abs(row["diff_percent"]) < 5.0, row
