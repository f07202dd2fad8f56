"""Smoke tests of the demo and every CLI verb on tiny data made here."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from keras_dmpo import cli


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three classes of 12 small RGB/grayscale PNGs of various sizes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["circle", "square", "stripe"]):
        os.makedirs(root / name)
        for i in range(12):
            size = 20 + (i % 3) * 10
            pixels = rng.integers(0, 60, size=(size, size)).astype("uint8")
            pixels[:: (c + 2)] += 150  # a class-dependent pattern
            mode = "L" if i % 2 else "RGB"
            image = Image.fromarray(pixels).convert(mode)
            image.save(root / name / f"{i}.png")
    return str(root)


def run_cli(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_verbs_on_an_image_folder(tiny_vit_preset, image_folder, tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    code, out, err = run_cli(
        [
            "train",
            "--preset",
            tiny_vit_preset,
            "--data",
            image_folder,
            "--exits",
            "1,2",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--output-dir",
            out_dir,
            "--verbose",
            "0",
        ],
        capsys,
    )
    assert code == 0, err
    model_path = os.path.join(out_dir, "model.keras")
    assert os.path.isfile(model_path)
    with open(os.path.join(out_dir, "training.json")) as handle:
        record = json.load(handle)
    assert record["class_names"] == ["circle", "square", "stripe"]
    from keras_dmpo.hashing import sha256_file

    assert record["model_sha256"] == sha256_file(model_path)

    # A second train into the same directory is refused before any work,
    # with one line, and the first model stays as it was.
    first = {name: open(os.path.join(out_dir, name), "rb").read() for name in os.listdir(out_dir)}
    code, out, err = run_cli(
        [
            "train",
            "--preset",
            tiny_vit_preset,
            "--data",
            image_folder,
            "--epochs",
            "1",
            "--output-dir",
            out_dir,
            "--verbose",
            "0",
        ],
        capsys,
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--output-dir" in err and "is not empty" in err and "--overwrite" in err
    assert {name: open(os.path.join(out_dir, name), "rb").read() for name in os.listdir(out_dir)} == first

    calibrate = ["calibrate", "--model", model_path, "--data", image_folder]
    # The tiny test ViT's heads are expensive: 95% is a reachable budget here.
    code, out, err = run_cli(calibrate + ["--budget", "0.95"], capsys)
    assert code == 0, err
    assert "calibrated (confidence) for 95%" in out
    with open(os.path.join(out_dir, "model.early_exit.json")) as handle:
        settings = json.load(handle)
    assert settings["policy"]["calibration"]["budget"] > 0

    # An accuracy target, the patience criterion and temperature scaling.
    code, out, err = run_cli(
        calibrate + ["--max-accuracy-drop", "0.05", "--criterion", "patience", "--temperature-scaling"],
        capsys,
    )
    assert code == 0, err
    assert "temperatures" in out and "ECE" in out
    assert "calibrated (patience) for at most 5 points below the last exit" in out
    with open(os.path.join(out_dir, "model.early_exit.json")) as handle:
        settings = json.load(handle)
    policy = settings["policy"]
    assert policy["criterion"] == "patience" and policy["patience"] >= 2 and policy["thresholds"] is None
    assert policy["calibration"]["mode"] == "max_accuracy_drop"
    assert len(policy["temperatures"]) == policy["num_exits"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(calibrate + ["--budget", "0.9", "--max-accuracy-drop", "0.01"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    # Back to the budget calibration the export below expects.
    code, out, err = run_cli(calibrate + ["--budget", "0.95", "--criterion", "confidence"], capsys)
    assert code == 0, err
    with open(os.path.join(out_dir, "model.early_exit.json")) as handle:
        settings = json.load(handle)

    export_dir = str(tmp_path / "export")
    # --web: batch-1 graphs (dynamic-batch exports are covered by the export tests).
    code, out, err = run_cli(["export", "--model", model_path, "--output-dir", export_dir, "--web"], capsys)
    assert code == 0, err
    assert f"keras-dmpo web {export_dir}" in out
    with open(os.path.join(export_dir, "manifest.json")) as handle:
        manifest = json.load(handle)
    assert manifest["stages"][0]["inputs"][0]["shape"][0] == 1
    assert settings["policy"]["criterion"] == "confidence"
    assert manifest["policy"]["thresholds"] == pytest.approx(settings["policy"]["thresholds"])
    assert manifest["class_names"] == ["circle", "square", "stripe"]

    code, out, err = run_cli(["predict", "--model", model_path, "--data", image_folder], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "index,label,class,exit_block,flops"
    assert len([line for line in lines if line[:1].isdigit()]) == 36
    assert "accuracy:" in out

    code, out, err = run_cli(
        ["benchmark", "--model", model_path, "--data", image_folder, "--budgets", "0.01,0.95,1.0"], capsys
    )
    assert code == 0, err
    assert "100%" in out
    assert "1%  unreachable: below the first exit's cost" in out

    # A training.json of another model (an interrupted train) is not trusted
    # for the class names.
    record["model_sha256"] = "0" * 64
    with open(os.path.join(out_dir, "training.json"), "w") as handle:
        json.dump(record, handle)
    code, _, err = run_cli(
        ["export", "--model", model_path, "--output-dir", str(tmp_path / "export_2")], capsys
    )
    assert code == 2 and "describes another model file" in err
    assert not os.path.exists(tmp_path / "export_2")


def test_cli_bad_inputs_give_one_line_errors(tmp_path, image_folder, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(
        [
            "train",
            "--data",
            str(empty),
            "--preset",
            "dmpo_vit_tiny_missing",
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "Unknown `preset` 'dmpo_vit_tiny_missing'" in err
    assert len(err.strip().splitlines()) == 1

    from keras_dmpo.image_folders import scan_image_folder

    with pytest.raises(ValueError, match="no such directory"):
        scan_image_folder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="has no class sub-folders"):
        scan_image_folder(str(empty))
    (empty / "cats").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        scan_image_folder(str(empty))
    (empty / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        scan_image_folder(str(empty))

    code, _, err = run_cli(
        ["predict", "--model", str(tmp_path / "none.keras"), "--data", image_folder], capsys
    )
    assert code == 2 and "no such file" in err
    with pytest.raises(SystemExit):
        cli.main(["calibrate", "--model", "m.keras", "--data", "digits", "--budget", "1.5"])
    assert "outside (0, 1]" in capsys.readouterr().err


def test_demo_end_to_end_tiny(tiny_vit_preset, tmp_path, capsys):
    out_dir = str(tmp_path / "demo")
    code, out, err = run_cli(
        [
            "demo",
            "--preset",
            tiny_vit_preset,
            "--data",
            "digits",
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--test-size",
            "60",
            "--output-dir",
            out_dir,
        ],
        capsys,
    )
    assert code == 0, err
    for name in (
        "report.md",
        "summary.json",
        "accuracy_vs_flops.png",
        "model.keras",
        "tflite/manifest.json",
        "tflite/samples/index.json",
    ):
        assert os.path.exists(os.path.join(out_dir, name)), name
    with open(os.path.join(out_dir, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["litert"]["same_exit"] == 1.0
    assert "LiteRT vs Keras" in out
    assert f"keras-dmpo web {os.path.join(out_dir, 'tflite')}" in out


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--learning-rate", "0", "'0' must be a positive number"),
        ("--learning-rate", "nan", "'nan' must be a positive number"),
        ("--weight-decay", "-1e-4", "'-1e-4' must be a finite number >= 0"),
        ("--epochs", "0", "'0' must be a positive integer"),
        ("--batch-size", "x", "'x' must be a positive integer"),
    ],
)
def test_train_rejects_bad_recipe_values_before_any_work(flag, value, message, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.build_parser().parse_args(["train", "--data", "digits", "--output-dir", "out", f"{flag}={value}"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {message}" in err


def test_train_defaults_are_the_recipe():
    from keras_dmpo import recipe

    args = cli.build_parser().parse_args(["train", "--data", "digits", "--output-dir", "out"])
    assert (args.learning_rate, args.batch_size, args.epochs, args.lr_schedule) == (
        recipe.DEFAULT_LEARNING_RATE,
        recipe.DEFAULT_BATCH_SIZE,
        recipe.DEFAULT_EPOCHS,
        "cosine",
    )
    assert args.weight_decay == recipe.DEFAULT_WEIGHT_DECAY
