"""`seglab serve`'s model loading: a `seglab train` run directory (its config, best checkpoint, dataset classes and
training crop) and a model name with a checkpoint; the command-line pairing errors."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="seglab serve needs the serve extra: pip install 'seglab[serve]'")

import seglab  # noqa: E402
from seglab.checkpoint import save_model  # noqa: E402
from seglab.cli.main import main  # noqa: E402
from seglab.cli.serve import load_served  # noqa: E402

pytestmark = pytest.mark.e2e


def test_serve_loads_a_run_directory_and_a_checkpoint(tmp_path):
    root = tmp_path / "shapes"
    assert main(["data", "shapes", "--out", str(root), "--n-train", "4", "--n-val", "2", "--size", "40"]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model: {{name: segformer_b0, overrides: {{drop_path_rate: 0.0}}}}
data:
  dataset: shapes
  root: {root}
  batch_size: 2
  val_batch_size: 2
  train_transform: {{crop_size: [36, 36], scale: [40, 40]}}
schedule: {{iters: 2, warmup_iters: 1}}
eval: {{interval: 2}}
train: {{checkpoint_interval: 2, log_interval: 1, work_dir: {tmp_path / "run"}}}
""")
    assert main(["train", str(config), "--no-progress"]) == 0
    served = load_served({"run": str(tmp_path / "run")}, "cpu", None, None)
    info = served.info()
    assert served.name == "run" and info["classes"][0] == "background" and len(info["classes"]) == 6
    assert info["crop_size"] == [36, 36] and info["stride"] == [24, 24] and info["mode"] == "whole"

    checkpoint = tmp_path / "b0.safetensors"
    save_model(checkpoint, seglab.create_model("segformer_b0", num_classes=3))
    served = load_served({"model": "segformer_b0", "checkpoint": str(checkpoint)}, "cpu", [64, 64], None)
    assert served.info()["classes"] == ["0", "1", "2"] and served.info()["crop_size"] == [64, 64]


def test_serve_command_line_errors(capsys):
    with pytest.raises(SystemExit, match="give a model"):
        main(["serve"])
    with pytest.raises(SystemExit, match="needs its --checkpoint"):
        main(["serve", "--model", "segformer_b0"])
    with pytest.raises(SystemExit, match="run directory"):
        main(["serve", "--run", "/nonexistent/run"])
    with pytest.raises(SystemExit, match="mask_rcnn_r50_fpn is a model of the .instance. task"):
        main(["serve", "--model", "mask_rcnn_r50_fpn", "--checkpoint", "x.safetensors"])
