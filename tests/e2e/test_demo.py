"""`make demo` runs `seglab demo` on configs/segformer/segformer_b0_shapes.yaml: the same command, shortened (a small
generated set, a few iterations), must write everything the README lists."""

from __future__ import annotations

import json
from pathlib import Path

from seglab.cli.main import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "segformer" / "segformer_b0_shapes.yaml"


def test_demo_writes_what_the_readme_lists(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--config", str(CONFIG), "--out", str(out),
                 "--set", f"data.root={tmp_path / 'shapes_demo'}", "--set", "data.generate.n_train=16",
                 "--set", "data.generate.n_val=4", "--set", "schedule.iters=4", "--set", "schedule.warmup_iters=1",
                 "--set", "eval.interval=4", "--set", "train.log_interval=2", "--set", "data.batch_size=2"]) == 0
    printed = capsys.readouterr().out
    assert "[demo] mIoU" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0
    for name in ("best.safetensors", "config.yaml", "log.jsonl", "training_curve.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 4
