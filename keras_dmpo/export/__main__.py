"""``python -m keras_dmpo.export``: export a saved EarlyExitModel on TensorFlow.

The entry point that ``EarlyExitModel.export_tflite`` / ``export_onnx`` run
in a ``KERAS_BACKEND=tensorflow`` subprocess when the caller's backend is JAX
or torch (the converters trace TensorFlow graphs). Like the CLI, it sits on
top of the package: nothing imports it.
"""

import argparse
import json

from keras_dmpo.export.hidden_packages import hide_packages

# Converting needs TensorFlow alone: JAX and torch are hidden before Keras is
# first imported (see hidden_packages for why). Only when run as the program,
# so that a process importing this module keeps its own backends.
OTHER_BACKENDS = ("jax", "jaxlib", "torch")
if __name__ == "__main__":
    hide_packages(OTHER_BACKENDS)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_dmpo.inference.early_exit import EarlyExitModel  # noqa: E402
from keras_dmpo.models.backbone_families import recomputed_on_load  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_dmpo.export", description="Export a saved EarlyExitModel (TensorFlow backend)."
    )
    parser.add_argument("format", choices=["tflite", "onnx"])
    parser.add_argument("model", help="an EarlyExitModel saved with .save() (.keras)")
    parser.add_argument("directory")
    parser.add_argument("--quantization", default=None, help="a converter mode or a named quantizer recipe")
    parser.add_argument(
        "--quantization-recipe", default=None, help="JSON file of a LiteRT quantizer recipe of one's own"
    )
    parser.add_argument(
        "--representative-data", default=None, help=".npy of model-space images (calibration)"
    )
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--web", action="store_true", help="batch-1 graphs for LiteRT.js")
    parser.add_argument("--class-names", default=None, help="JSON list of names")
    parser.add_argument(
        "--exact-variables",
        default=None,
        help="npz of variables keras-hub recomputes on load (see recomputed_on_load)",
    )
    args = parser.parse_args(argv)

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("run with KERAS_BACKEND=tensorflow")

    # The saved optimizer, loss and metrics are not needed to convert, and
    # loading them would import the training backend's optimizer module.
    ee = EarlyExitModel.load(args.model, compile=False)
    if args.exact_variables:
        with np.load(args.exact_variables) as exact:
            for name, variable in recomputed_on_load(ee.model.backbone).items():
                variable.assign(exact[name])
    class_names = None if args.class_names is None else json.loads(args.class_names)
    data = None if args.representative_data is None else np.load(args.representative_data)
    quantization = args.quantization
    if args.quantization_recipe is not None:
        with open(args.quantization_recipe, encoding="utf-8") as handle:
            quantization = json.load(handle)
    export = ee.export_tflite if args.format == "tflite" else ee.export_onnx
    kwargs = (
        {"quantization": quantization, "representative_data": data, "web": args.web}
        if args.format == "tflite"
        else {}
    )
    export(args.directory, overwrite=args.overwrite, class_names=class_names, **kwargs)


if __name__ == "__main__":
    main()
