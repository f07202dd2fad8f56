"""Functional models built from a ``StagePlan``, sharing its layers: the
per-stage graphs that batched early exit runs and the exporters convert,
and the single-exit "full model"."""

import keras


def single_exit_model(plan):
    """images -> ``{"probabilities"}`` of the last exit, without the early
    predictors: the "full model" that FLOPs fractions and latencies compare
    to.

    Args:
        plan: a ``StagePlan`` (``DMPOClassifier.stage_plan``).
    """
    images = keras.Input(shape=plan.image_shape, name="images")
    tokens = plan.embed(images)
    for stage in plan.stages:
        tokens = plan.run_trunk(stage, tokens)
    logits = plan.predict(plan.stages[-1], tokens)
    probabilities = keras.layers.Softmax(dtype="float32", name="softmax")(logits)
    return keras.Model(images, {"probabilities": probabilities}, name="single_exit")


def stage_models(plan, probabilities=True):
    """One functional model per stage, sharing the plan's layers.

    Stage 1 maps ``images`` to ``{"tokens", "probabilities"}``; middle
    stages map ``tokens`` to ``{"tokens", "probabilities"}``; the last maps
    ``tokens`` to ``{"probabilities"}``. With ``probabilities=False`` the
    heads' logits are returned under ``"logits"``. Used for batched early
    exit and for the TFLite stage graphs.

    Args:
        plan: a ``StagePlan`` (``DMPOClassifier.stage_plan``).
        probabilities: softmax the logits (float32) or return them as they are.
    """
    key = "probabilities" if probabilities else "logits"
    models = []
    for stage in plan.stages:
        if stage.index == 0:
            inputs = keras.Input(shape=plan.image_shape, name="images")
            tokens = plan.embed(inputs)
        else:
            inputs = keras.Input(shape=plan.token_shape, name="tokens")
            tokens = inputs
        tokens, logits = plan.run(stage, tokens)
        if probabilities:
            logits = keras.layers.Softmax(dtype="float32", name=f"stage_{stage.index + 1}_softmax")(logits)
        outputs = {key: logits}
        if stage.index < len(plan.stages) - 1:
            outputs["tokens"] = tokens
        models.append(keras.Model(inputs, outputs, name=f"stage_{stage.index + 1}"))
    return models


def exit_features_model(plan, name="exit_features"):
    """images -> ``{"exit_k": ...}``: the plan's output at every exit (the
    features, for a plan without heads; the logits otherwise).

    Args:
        plan: a ``StagePlan``.
        name: the model's name.
    """
    images = keras.Input(shape=plan.image_shape, name="images")
    outputs = plan(images)
    return keras.Model(images, {f"exit_{k + 1}": value for k, value in enumerate(outputs)}, name=name)
