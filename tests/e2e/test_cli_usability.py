"""The command line as a user meets it: typed --set values, one-line errors with close matches, predict with the
dataset's classes and colours (a legend, a summary of skipped files), eval's inference flags, the train/test scale
warning, files readable by others, a --help that does not load torch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import seglab
from seglab.checkpoint import save_model
from seglab.cli.main import main

PALETTE = [[10, 20, 30], [200, 40, 40], [40, 200, 40]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 3-class folder dataset with its own dataset.yaml (names and colours), 36x52 images."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (36, 52, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            mask = np.zeros((36, 52), np.uint8)
            mask[5:20, 5:30], mask[22:, 30:] = 1, 2
            Image.fromarray(mask).save(root / "annotations" / split / f"{i}.png")
    (root / "dataset.yaml").write_text(f"classes: [ground, apple, leaf]\npalette: {PALETTE}\n")
    return root


@pytest.fixture(scope="module")
def config(folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "my.yaml"
    path.write_text(f"""
model: {{name: segformer_b0, overrides: {{drop_path_rate: 0.0}}}}
data:
  dataset: folder
  root: {folder}
  batch_size: 2
  train_transform: {{crop_size: [32, 32], scale: [52, 36]}}
schedule: {{iters: 2, warmup_iters: 1}}
eval: {{interval: 2}}
train: {{checkpoint_interval: 2, log_interval: 1}}
""")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "b0_3classes.safetensors"
    save_model(path, seglab.create_model("segformer_b0", num_classes=3, drop_path_rate=0.0))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_set_values_are_typed_before_anything_is_written(config, tmp_path, capsys):
    work = tmp_path / "run"
    assert main(["train", str(config), "--work-dir", str(work), "--set", "data.batch_size=abc"]) == 2
    assert "data.batch_size: expected an integer, got 'abc'" in one_line_error(capsys)
    assert main(["train", str(config), "--work-dir", str(work), "--set", "data.train_transform.flip_prob=2"]) == 2
    assert "flip_prob: expected between 0 and 1, got 2.0" in one_line_error(capsys)
    assert not work.exists()


def test_unknown_models_get_close_matches_without_quotes(checkpoint, tmp_path, capsys):
    assert main(["info", "segfromer_b0"]) == 2
    err = one_line_error(capsys)
    assert "unknown model segfromer_b0; did you mean segformer_b0" in err and "'" not in err
    # the unknown name is what is wrong, not the checkpoint
    assert main(["predict", "--model", "segformer_b9", "--checkpoint", str(checkpoint), str(tmp_path),
                 "--out", str(tmp_path / "p")]) == 2
    assert "unknown model segformer_b9; did you mean" in one_line_error(capsys)


def test_a_class_count_mismatch_names_both_counts(checkpoint, folder, tmp_path, capsys):
    assert main(["predict", "--model", "segformer_b0", "--num-classes", "5", "--checkpoint", str(checkpoint),
                 str(folder / "images" / "val"), "--out", str(tmp_path / "p")]) == 2
    err = one_line_error(capsys)
    assert "the checkpoint has num_classes=3, the model was built with num_classes=5" in err


def test_predict_draws_with_the_datasets_classes_and_colours(config, checkpoint, folder, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("0.png", "1.png"):
        (inputs / name).write_bytes((folder / "images" / "val" / name).read_bytes())
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert main(["predict", "--config", str(config), "--checkpoint", str(checkpoint), str(inputs),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 2 label PNG(s) and overlay(s)" in captured.out
    summary = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(summary) == 1 and "skipped 2 file(s): 1 not an image (.txt), 1 unreadable (" in summary[0]
    assert "broken.jpg" in summary[0]
    label = Image.open(out / "0.png")
    assert label.getpalette()[:9] == [v for c in PALETTE for v in c]  # dataset.yaml's colours, not make_palette's
    overlay = np.asarray(Image.open(out / "0_overlay.png"))
    assert overlay.shape[0] == 36 and overlay.shape[1] > 52  # the legend panel on the right
    legend = overlay[:, 52:].reshape(-1, 3)
    present = np.unique(np.asarray(label))
    for c in present:  # a swatch of each class present, in its colour
        assert (legend == PALETTE[c]).all(1).any(), c


def test_eval_takes_the_inference_flags(config, checkpoint, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--mode", "slide"]) == 2
    assert "slide mode needs crop_size and stride" in one_line_error(capsys)
    assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--mode", "slide", "--crop-size", "32", "32",
                 "--stride", "16", "16", "--flip", "--scales", "1.0", "1.25", "--out", str(out)]) == 0
    slide = json.loads(out.read_text())
    assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    whole = json.loads(out.read_text())
    assert slide["mIoU"] != whole["mIoU"]


def test_train_and_test_scales_that_differ_are_warned_about(config, checkpoint, capsys):
    assert main(["eval", str(config), "--checkpoint", str(checkpoint)]) == 0
    assert "warning" not in capsys.readouterr().err  # training's scale is the images' own size
    assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--set",
                 "data.train_transform.scale=[104, 72]"]) == 0
    err = capsys.readouterr().err
    assert "seglab eval: warning: training resizes 0.png (36x52) to 72x104" in err
    assert "evaluation feeds it at 36x52" in err and "data.test_transform.scale: [104, 72]" in err
    assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--set", "data.train_transform.scale=[104, 72]",
                 "--set", "data.test_transform.scale=[104, 72]"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_files_are_created_with_the_users_umask(config, checkpoint, folder, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        work = tmp_path / "run"
        assert main(["train", str(config), "--work-dir", str(work), "--no-progress"]) == 0
        out = tmp_path / "pred"
        assert main(["predict", "--config", str(config), "--checkpoint", str(work / "iter_2.safetensors"),
                     str(folder / "images" / "val" / "0.png"), "--out", str(out)]) == 0
        os.umask(0o077)
        assert main(["data", "shapes", "--out", str(tmp_path / "private"), "--n-train", "1", "--n-val", "1",
                     "--size", "16"]) == 0
    finally:
        os.umask(old)
    for path in (work / "iter_2.safetensors", work / "iter_2.state.pt", work / "latest.json", work / "config.yaml",
                 work / "best.safetensors", out / "0.png", out / "0_overlay.png"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path
    assert oct((tmp_path / "private" / "dataset.yaml").stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["models", "segformer"]])
def test_help_and_listing_do_not_load_torch(argv):
    code = ("import sys\nfrom seglab.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False"), result.stdout
    if argv[0] == "models":
        assert "segformer_b5" in result.stdout and "upernet" not in result.stdout
