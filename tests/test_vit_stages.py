import keras
import numpy as np
import pytest

from keras_dmpo.models.vit_stages import ViTStages, default_exits, load_vit_backbone, validate_exits


def test_preset_round_trip_is_exact(tiny_vit_preset, images):
    from conftest import build_tiny_vit

    original = build_tiny_vit(seed=0)
    loaded = load_vit_backbone(tiny_vit_preset)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(original(images)), keras.ops.convert_to_numpy(loaded(images))
    )


def test_last_exit_equals_backbone_output(tiny_vit, images):
    stages = ViTStages(tiny_vit, exits=[1, 3])
    assert stages.exits == (1, 3, 4)  # the last block is added
    outputs = stages.tokens_model(images)
    assert sorted(outputs) == ["exit_1", "exit_2", "exit_3"]
    expected = keras.ops.convert_to_numpy(tiny_vit(images))
    got = keras.ops.convert_to_numpy(outputs["exit_3"])
    assert np.max(np.abs(got - expected)) <= 1e-6
    for name in outputs:
        assert tuple(outputs[name].shape) == (3, 17, 32)


def test_intermediate_exits_match_manual_block_calls(tiny_vit, images):
    stages = ViTStages(tiny_vit, exits=[2, 4])
    encoder = tiny_vit.get_layer("vit_encoder")
    x = tiny_vit.get_layer("vit_patching_and_embedding")(images)
    x = encoder.encoder_layers[0](x)
    x = encoder.encoder_layers[1](x)
    got = stages.tokens_model(images)["exit_1"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(x), atol=1e-6)


def test_stages_share_weights_with_backbone(tiny_vit):
    stages = ViTStages(tiny_vit, exits=[2])
    backbone_ids = {id(v) for v in tiny_vit.weights}
    model_ids = {id(v) for v in stages.tokens_model.weights}
    assert model_ids == backbone_ids


def test_stage_blocks_and_geometry(tiny_vit):
    stages = ViTStages(tiny_vit, exits=[1, 3])
    assert stages.stage_blocks == [[0], [1, 2], [3]]
    assert stages.grid_shape == (4, 4)
    assert stages.num_tokens == 17


def test_image_classifier_uses_its_backbone(tiny_vit):
    import keras_hub

    classifier = keras_hub.models.ViTImageClassifier(backbone=tiny_vit, num_classes=3)
    assert ViTStages(classifier, exits=[2]).backbone is tiny_vit


def test_default_exits():
    assert default_exits(4) == (1, 2, 3, 4)
    assert default_exits(12) == (2, 3, 4, 6, 8, 9, 10, 12)
    exits = default_exits(24)
    assert exits[-1] == 24 and len(exits) == 8 and exits[0] / 24 <= 0.15


@pytest.mark.parametrize(
    "exits, message",
    [
        ([], "is empty"),
        ([3, 1], "increasing order"),
        ([2, 2], "repeated"),
        ([0, 2], "contains 0, outside \\[1, 4\\]"),
        ([1, 5], "contains 5, outside \\[1, 4\\]"),
        ([1.5], "integers"),
        ("1,2", "list of 1-based block numbers"),
    ],
)
def test_bad_exits(exits, message):
    with pytest.raises(ValueError, match=message):
        validate_exits(exits, 4)


def test_not_a_vit_backbone():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="`backbone` must be one of the keras-hub backbones ViTBackbone"):
        ViTStages(model, exits=[1])


def test_missing_preset_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_vit_backbone(str(tmp_path / "nope"))


def test_preset_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        load_vit_backbone(str(tmp_path))


def test_unknown_preset_name():
    with pytest.raises(ValueError, match="Unknown `preset` 'vit_nonexistent'.*dmpo_vit_tiny"):
        load_vit_backbone("vit_nonexistent")


def test_lazy_package_import_does_not_load_keras():
    import subprocess
    import sys

    code = (
        "import sys, keras_dmpo; "
        "bad = [m for m in ('keras', 'keras_hub', 'tensorflow') if m in sys.modules]; "
        "assert not bad, bad; print(keras_dmpo.__version__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
