"""Command-line interface: ``keras-dmpo demo | train | calibrate | export | predict | benchmark``."""

import argparse
import os
import sys


def _set_backend(argv):
    # KERAS_BACKEND is read when keras is first imported, so --backend must be
    # applied before anything imports keras.
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            os.environ["KERAS_BACKEND"] = argv[i + 1]
        elif arg.startswith("--backend="):
            os.environ["KERAS_BACKEND"] = arg.split("=", 1)[1]


def _demo(args):
    from keras_dmpo.demo import run_demo

    return run_demo(args)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-dmpo",
        description="DMPO early-exit tuning of keras-hub ViTs, calibration and TFLite export.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the end-to-end demo")
    demo.add_argument("--output-dir", default="dmpo-demo", help="where results go (default ./dmpo-demo)")
    demo.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default=None,
                      help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    _set_backend(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as error:
        print(f"keras-dmpo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
