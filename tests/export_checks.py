"""Shared helpers of the export and LiteRT runtime tests.

Builds early-exit stage models from the tiny ViT (ViTStages + a LayerNorm /
Dense / softmax head on the class token per exit), the Keras reference of the
early-exit rule, and one float32 TFLite export per test process. The export
needs the TensorFlow backend: on JAX/torch it runs in a
``KERAS_BACKEND=tensorflow`` subprocess (``python tests/export_checks.py DIR``),
which is also the cross-backend path that EarlyExitModel.export_tflite takes.
"""

import json
import os
import subprocess
import sys

import numpy as np

NUM_CLASSES = 5
EXITS = [1, 3, 4]
# Raw pixels are uint8-like in [0, 255]; the model sees x / 255.
PREPROCESSING = {"scale": 1 / 255, "offset": 0.0, "input_range": [0, 255]}
CLASS_NAMES = [f"class_{i}" for i in range(NUM_CLASSES)]
NUM_IMAGES = 24


def build_stage_models(exits=EXITS, seed=0):
    """Stage models, monolithic model and stages of the tiny ViT.

    Returns:
        ``(stage_models, monolithic_model)``: Keras models with the
        interface of ``export_stage_graphs``.
    """
    import keras
    from conftest import build_tiny_vit

    from keras_dmpo.models.vit_stages import ViTStages

    stages = ViTStages(build_tiny_vit(seed=seed), exits=exits)
    # Large head weights: random heads would give near-uniform probabilities
    # and every sample would leave at the same exit.
    init = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    heads = []
    for k in range(len(stages.exits)):
        norm = (
            stages.final_norm
            if k == len(stages.exits) - 1
            else keras.layers.LayerNormalization(name=f"head_{k + 1}_norm")
        )
        dense = keras.layers.Dense(
            NUM_CLASSES, activation="softmax", kernel_initializer=init, name=f"head_{k + 1}_dense"
        )
        heads.append((norm, dense))

    def head(k, tokens):
        norm, dense = heads[k]
        if k == len(stages.exits) - 1:
            return dense(norm(tokens)[:, 0, :])
        return dense(norm(tokens[:, 0, :]))

    last = len(stages.exits) - 1
    models = []
    for k, blocks in enumerate(stages.stage_blocks):
        if k == 0:
            inputs = keras.Input(stages.image_shape, name="images")
            tokens = stages.run_blocks(stages.embed(inputs), blocks)
        else:
            inputs = keras.Input((stages.num_tokens, stages.hidden_dim), name="tokens")
            tokens = stages.run_blocks(inputs, blocks)
        outputs = {"probabilities": head(k, tokens)}
        if k != last:
            outputs["tokens"] = tokens
        models.append(keras.Model(inputs, outputs, name=f"stage_{k + 1}"))

    images = keras.Input(stages.image_shape, name="images")
    tokens = stages.run_blocks(stages.embed(images), range(stages.num_layers))
    monolithic = keras.Model(images, {"probabilities": head(last, tokens)}, name="monolithic")
    return models, monolithic


def keras_exit_probabilities(stage_models, model_images):
    """Every exit's probabilities for every image (full batch, Keras)."""
    import keras

    feed = model_images
    outputs = []
    for model in stage_models:
        result = model(feed, training=False)
        outputs.append(keras.ops.convert_to_numpy(result["probabilities"]))
        if "tokens" in result:
            feed = result["tokens"]
    return outputs


def midpoint_threshold(scores, fraction_leaving):
    """A threshold between two observed scores, so float noise cannot flip it."""
    ordered = np.sort(np.asarray(scores))[::-1]
    n = int(round(fraction_leaving * len(ordered)))
    n = min(max(n, 1), len(ordered) - 1)
    return float((ordered[n - 1] + ordered[n]) / 2)


def raw_images(n=NUM_IMAGES, seed=0):
    from conftest import TINY_VIT

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n,) + TINY_VIT["image_shape"]).astype("uint8")


POLICY_FIELDS = ("thresholds", "criterion", "temperatures", "patience")


def export_spec(exits, thresholds, criterion="confidence", **changes):
    """An ExportSpec for the tiny stage models (``changes`` override fields;
    the policy's own fields build its ``ExitPolicy``)."""
    from keras_dmpo.export.spec import ExportSpec
    from keras_dmpo.policy import ExitPolicy

    policy = {"thresholds": thresholds, "criterion": criterion}
    policy.update({key: changes.pop(key) for key in POLICY_FIELDS if key in changes})
    return ExportSpec(
        **{**export_kwargs(exits), "policy": ExitPolicy(num_exits=len(exits), **policy), **changes}
    )


def export_kwargs(exits):
    from conftest import TINY_VIT

    # Simple stand-in FLOPs: 1 MFLOP per block, 0.1 MFLOP embedding/head.
    flops = [1e5 + 1e6 * e + 1e5 * (k + 1) for k, e in enumerate(exits)]
    return dict(
        exits=exits,
        flops_per_exit=flops,
        full_model_flops=1e5 + 4e6 + 1e5,
        image_shape=TINY_VIT["image_shape"],
        preprocessing=PREPROCESSING,
        class_names=CLASS_NAMES,
    )


def make_float_export(directory, web=False):
    """Export the tiny stage models in this (TensorFlow) process.

    Writes ``directory/export`` and ``directory/reference.npz`` (Keras exit
    probabilities of ``raw_images()``) and returns ``(export_dir, reference)``.
    ``web``: batch-1 graphs (``export_stage_graphs(..., web=True)``).
    """
    from keras_dmpo.export.tflite import export_stage_graphs
    from keras_dmpo.policy.rule import exit_scores

    models, monolithic = build_stage_models()
    images = raw_images()
    model_images = images.astype("float32") / 255
    probabilities = keras_exit_probabilities(models, model_images)
    # About a third of the images leave at each exit.
    t1 = midpoint_threshold(exit_scores(probabilities[0], "confidence"), 1 / 3)
    t2 = midpoint_threshold(exit_scores(probabilities[1], "confidence"), 1 / 2)
    export_dir = os.path.join(directory, "export")
    spec = export_spec(EXITS, [t1, t2, 0.0])
    export_stage_graphs(export_dir, models, spec, monolithic_model=monolithic, web=web)
    mono = np.asarray(monolithic(model_images)["probabilities"])
    reference = {f"exit_{k + 1}": p for k, p in enumerate(probabilities)}
    reference["monolithic"] = mono
    reference["images"] = images
    np.savez(os.path.join(directory, "reference.npz"), **reference)
    return export_dir, reference


_FLOAT_EXPORT = {}


def float_export(tmp_path_factory, web=False):
    """One float32 export of each kind (dynamic batch, or batch-1 with
    ``web``) per test process (in a TF subprocess off TF)."""
    if web not in _FLOAT_EXPORT:
        import keras

        directory = str(tmp_path_factory.mktemp("web_export" if web else "float_export"))
        if keras.backend.backend() == "tensorflow":
            _FLOAT_EXPORT[web] = make_float_export(directory, web=web)
        else:
            run_tensorflow_subprocess([__file__, directory] + (["--web"] if web else []))
            with np.load(os.path.join(directory, "reference.npz")) as data:
                reference = dict(data)
            _FLOAT_EXPORT[web] = (os.path.join(directory, "export"), reference)
    return _FLOAT_EXPORT[web]


def run_tensorflow_subprocess(args, timeout=600):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests_dir)
    env["PYTHONPATH"] = os.pathsep.join([tests_dir, root, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"TensorFlow subprocess {args} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
        )
    return result


def load_manifest(directory):
    with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as handle:
        return json.load(handle)


if __name__ == "__main__":
    make_float_export(sys.argv[1], web="--web" in sys.argv[2:])
