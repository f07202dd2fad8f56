"""Functional stage models of a DMPOClassifier, sharing its layers: what
batched early exit runs stage by stage and what the exporters convert."""

import keras


def single_exit_model(model):
    """images -> ``{"probabilities"}`` of the last exit, without the early
    heads: the "full model" that FLOPs fractions and latencies compare to."""
    stages = model._stages
    images = keras.Input(shape=stages.image_shape, name="images")
    tokens = model._embed(images)
    for k in range(len(stages.exits)):
        tokens = model._run_trunk(k, tokens)
    logits = model._predict_exit(len(stages.exits) - 1, tokens)
    probabilities = keras.layers.Softmax(dtype="float32", name="softmax")(logits)
    return keras.Model(images, {"probabilities": probabilities}, name="single_exit")


def stage_models(model, probabilities=True):
    """One functional model per stage, sharing this model's layers.

    Stage 1 maps ``images`` to ``{"tokens", "probabilities"}``; middle
    stages map ``tokens`` to ``{"tokens", "probabilities"}``; the last maps
    ``tokens`` to ``{"probabilities"}``. With ``probabilities=False`` the
    heads' logits are returned under ``"logits"``. Used for batched early
    exit and for the TFLite stage graphs.
    """
    stages = model._stages
    key = "probabilities" if probabilities else "logits"
    models = []
    num_exits = len(stages.exits)
    for k in range(num_exits):
        if k == 0:
            inputs = keras.Input(shape=stages.image_shape, name="images")
            tokens = model._embed(inputs)
        else:
            inputs = keras.Input(shape=(stages.num_tokens, stages.hidden_dim), name="tokens")
            tokens = inputs
        tokens, logits = model._run_stage(k, tokens)
        if probabilities:
            logits = keras.layers.Softmax(dtype="float32", name=f"stage_{k + 1}_softmax")(logits)
        outputs = {key: logits}
        if k < num_exits - 1:
            outputs["tokens"] = tokens
        models.append(keras.Model(inputs, outputs, name=f"stage_{k + 1}"))
    return models
