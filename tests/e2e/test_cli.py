"""The `seglab` command line on generated data: data, train, eval, predict, models, info, convert, export."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import seglab
from seglab.checkpoint import read_checkpoint_meta, save_model
from seglab.cli.main import main


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "shapes"
    assert main(["data", "shapes", "--out", str(root), "--n-train", "8", "--n-val", "3", "--size", "40",
                 "--seed", "5"]) == 0
    return root


@pytest.fixture(scope="module")
def run_config(shapes, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(f"""
model: {{name: segformer_b0, overrides: {{drop_path_rate: 0.0}}}}
data:
  dataset: shapes
  root: {shapes}
  batch_size: 2
  val_batch_size: 2
  train_transform: {{crop_size: [32, 32], scale: [40, 40]}}
schedule: {{iters: 3, warmup_iters: 1}}
eval: {{interval: 3}}
train: {{checkpoint_interval: 3, log_interval: 1}}
""")
    return path


def test_data_shapes_layout(shapes):
    assert len(list((shapes / "images" / "train").glob("*.png"))) == 8
    assert len(list((shapes / "annotations" / "val").glob("*.png"))) == 3
    assert (shapes / "dataset.yaml").is_file()


def test_train_eval_predict(run_config, shapes, tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["train", str(run_config), "--work-dir", str(work), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "triangle" in out
    checkpoint = work / "iter_3.safetensors"
    meta = read_checkpoint_meta(checkpoint)
    assert meta.model == "segformer_b0" and meta.num_classes == 6 and meta.overrides == {"drop_path_rate": 0.0}

    metrics_path = tmp_path / "metrics.json"
    confusion = tmp_path / "confusion.png"
    assert main(["eval", str(run_config), "--checkpoint", str(checkpoint), "--out", str(metrics_path),
                 "--confusion", str(confusion)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert 0.0 <= metrics["aAcc"] <= 1.0 and len(metrics["IoU"]) == 6
    assert Image.open(confusion).size[0] > 100

    preds = tmp_path / "preds"
    val_dir = shapes / "images" / "val"
    assert main(["predict", "--model", "segformer_b0", "--checkpoint", str(checkpoint), str(val_dir),
                 "--out", str(preds), "--flip"]) == 0
    label = np.asarray(Image.open(preds / "00000.png"))
    assert label.shape == (40, 40) and label.max() < 6  # input size, class indices
    assert Image.open(preds / "00000.png").mode == "P"
    overlay = np.asarray(Image.open(preds / "00000_overlay.png"))
    assert overlay.shape[0] == 40 and overlay.shape[1] > 40 and overlay.shape[2] == 3  # image | legend
    # the checkpoint carries the dataset's class names and colours: the label PNG is drawn in them
    assert json.loads(meta.extra["classes"])[3] == "triangle"
    from seglab.data.synthetic import SHAPES_PALETTE

    assert Image.open(preds / "00000.png").getpalette()[:18] == [v for c in SHAPES_PALETTE for v in c]

    # slide mode through the CLI, with a config (its test transform and eval settings)
    slide = tmp_path / "slide"
    assert main(["predict", "--config", str(run_config), "--checkpoint", str(checkpoint),
                 str(val_dir / "00001.png"), "--out", str(slide), "--mode", "slide", "--crop-size", "32", "32",
                 "--stride", "16", "16"]) == 0
    assert np.asarray(Image.open(slide / "00001.png")).shape == (40, 40)


def test_predict_refuses_a_checkpoint_of_another_model(tmp_path, shapes, capsys):
    model = seglab.create_model("segformer_b1", num_classes=6)
    save_model(tmp_path / "b1.safetensors", model)
    code = main(["predict", "--model", "segformer_b0", "--checkpoint", str(tmp_path / "b1.safetensors"),
                 str(shapes / "images" / "val"), "--out", str(tmp_path / "p")])
    assert code == 2
    assert "made for model segformer_b1, not segformer_b0" in capsys.readouterr().err


def test_bad_mask_is_reported_with_its_file(run_config, shapes, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(shapes, broken)
    (broken / "annotations" / "val" / "00002.png").write_bytes(b"not a png")
    code = main(["eval", str(run_config), "--set", f"data.root={broken}", "--checkpoint",
                 str(_random_checkpoint(tmp_path))])
    err = capsys.readouterr().err
    assert code == 2 and "00002.png" in err and "Traceback" not in err


def _random_checkpoint(tmp_path):
    path = tmp_path / "random.safetensors"
    save_model(path, seglab.create_model("segformer_b0", num_classes=6, drop_path_rate=0.0))
    return path


def test_unknown_config_key_is_reported(run_config, capsys):
    code = main(["train", str(run_config), "--set", "optim.learning_rate=1"])
    assert code == 2
    assert "valid keys of optim" in capsys.readouterr().err


def test_models_and_info(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in seglab.list_models():
        assert name in out
    assert "GFLOPs" not in out  # counted only when asked
    assert main(["models", "segformer", "--flops", "--size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("segformer_")]
    assert len(rows) == 6 and "GFLOPs @64x64" in lines[0] and not any("upernet" in line for line in lines)
    assert main(["models", "upernet_swin_?"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]}
    assert names == {"upernet_swin_t", "upernet_swin_s", "upernet_swin_b", "upernet_swin_l"}
    assert main(["models", "segfromer"]) == 2
    assert "no model matches segfromer" in capsys.readouterr().err
    assert main(["info", "segformer_b0", "--height", "64", "--width", "96"]) == 0
    out = capsys.readouterr().out
    assert "(1, 32, 16, 24)" in out and "(1, 256, 2, 3)" in out  # stride 4 and stride 32 outputs
    assert "3.753 M" in out


def test_convert_round_trip_from_hf(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(num_labels=5)
    hf = transformers.SegformerForSemanticSegmentation(config).eval()
    src = tmp_path / "hf.pt"
    torch.save(hf.state_dict(), src)
    dst = tmp_path / "converted.safetensors"
    assert main(["convert", "--source", "hf", "--model", "segformer_b0", str(src), str(dst)]) == 0
    model = seglab.create_model("segformer_b0", checkpoint=dst).eval()
    assert model.num_classes == 5
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert (model(x) - hf(pixel_values=x).logits).abs().max() < 1e-4


@pytest.mark.onnx
def test_export_cli(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "b0.onnx"
    assert main(["export", "--model", "segformer_b0", "--num-classes", "4", "--out", str(out), "--height", "64",
                 "--width", "64", "--check"]) == 0
    text = capsys.readouterr().out
    diff = float(text.split("max abs diff: ")[1].split()[0])
    assert out.is_file() and diff <= 1e-4
    import onnx

    graph = onnx.load(str(out)).graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.input, *graph.output)]
    assert dims[0] == ["batch", 3, "height", "width"]
    assert dims[1][:2] == ["batch", 4] and "height" in dims[1][2] and "width" in dims[1][3]
