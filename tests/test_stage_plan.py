"""The one forward pass: a StagePlan drives the classifier's graph, its stage
models, its single-exit model and the ViTStages token model."""

import keras
import numpy as np
import pytest
from conftest import build_tiny_vit

from keras_dmpo import DMPOClassifier
from keras_dmpo.models.stage_plan import StagePlan
from keras_dmpo.models.vit_stages import ViTStages


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    model = DMPOClassifier(
        backbone=build_tiny_vit(seed=0), num_classes=3, exits=[1, 3], input_normalization="imagenet"
    )
    # Zero-initialised adapter and bypass outputs would hide a missing layer.
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:
        variable.assign(numpy(variable) + 0.05 * rng.normal(size=variable.shape).astype("float32"))
    return model


def test_plan_describes_every_stage(model):
    plan = model.stage_plan
    assert [stage.blocks for stage in plan.stages] == [(0,), (1, 2), (3,)]
    assert [stage.exit_block for stage in plan.stages] == [1, 3, 4]
    for stage in plan.stages:
        assert list(stage.adapters) == [model.trunk_adapters[i] for i in stage.blocks]
        assert stage.bypass is model.exit_bypass(stage.index)
        assert stage.head is model.exit_heads[stage.index]
    assert [stage.final_norm for stage in plan.stages[:-1]] == [None, None]
    assert plan.stages[-1].final_norm is model.stages.final_norm
    assert model.bypass_exits == (1, 3)
    assert plan.token_shape == (17, 32) and plan.image_shape == (32, 32, 3)


def test_stage_models_and_single_exit_model_equal_the_classifier(model, images):
    expected = model.predict(images, verbose=0)
    inputs = images
    for k, stage in enumerate(model.build_stage_models(probabilities=False)):
        outputs = stage.predict(inputs, verbose=0)
        np.testing.assert_allclose(outputs["logits"], expected[f"exit_{k + 1}"], atol=1e-6)
        inputs = outputs.get("tokens")
    single = model.build_single_exit_model().predict(images, verbose=0)["probabilities"]
    np.testing.assert_allclose(single, numpy(keras.ops.softmax(expected["exit_3"])), atol=1e-6)


def test_graphs_share_the_classifier_weights(model):
    own = {id(v) for v in model.weights}
    for graph in model.build_stage_models() + [model.build_single_exit_model()]:
        assert {id(v) for v in graph.weights} <= own


def test_embed_normalises_then_embeds(model, images):
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = model.stages.embed(((images - mean) / std).astype("float32"))
    np.testing.assert_allclose(numpy(model.stage_plan.embed(images)), numpy(expected), atol=1e-5)


def test_plan_without_heads_gives_the_exit_tokens(tiny_vit, images):
    plan = StagePlan(ViTStages(tiny_vit, exits=[2]))
    assert all(stage.head is None and stage.adapters == () for stage in plan.stages)
    features = plan(images)
    assert len(features) == 2
    np.testing.assert_allclose(numpy(features[-1]), numpy(tiny_vit(images)), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(trunk_adapters=[None] * 3),
            r"`trunk_adapters` must have one adapter per block \(4\) or none; got 3",
        ),
        (dict(heads=[None]), r"`heads` must have one entry per exit \(2\); got 1"),
        (dict(bypasses=[None] * 3), r"`bypasses` must have one entry per exit \(2\); got 3"),
    ],
)
def test_bad_plan_arguments(tiny_vit, kwargs, message):
    with pytest.raises(ValueError, match=message):
        StagePlan(ViTStages(tiny_vit, exits=[2]), **kwargs)
