"""`make demo` (`seglab demo`): generate shapes, train SegFormer-B0, evaluate, and draw what it predicts.

Top floor, beside `seglab.cli`: it trains through `seglab.cli.semantic.run_training`; no cli module imports this one
except `seglab.cli.main`, when the demo command runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def run_demo(config_path: str, out: str, overrides: list[str] | None = None, num_overlays: int = 16) -> int:
    """Runs the demo config end to end; everything lands in `out`."""
    from seglab.cli.common import class_info, jsonable
    from seglab.cli.semantic import run_training
    from seglab.config import load_config
    from seglab.engine.run import build_model, evaluate
    from seglab.metrics import format_table
    from seglab.tools.visualize import plot_training_curve, save_side_by_side

    start = time.perf_counter()
    config = load_config(config_path, [f"train.work_dir={out}", *(overrides or [])])
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    out_dir = Path(out)
    print(f"[demo] config {config_path}; data {config.data.root}; output {out_dir}")
    _, val_set, result = run_training(config)
    train_time = time.perf_counter() - start

    # final weights are evaluated again here so that the table is what a user gets from `seglab eval`
    num_classes = config.model.num_classes or len(val_set.classes)
    model = build_model(config, num_classes, checkpoint=str(_final_checkpoint(out_dir)))
    classes, palette = class_info(val_set, num_classes)
    overlay_dir = out_dir / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    drawn = []

    def draw(samples, labels):
        for sample, pred in zip(samples, labels, strict=True):
            if len(drawn) >= num_overlays:
                return
            name = Path(sample["path"]).stem
            save_side_by_side(overlay_dir / f"{name}.png", sample["image"].permute(1, 2, 0).numpy(),
                              sample["mask"].numpy(), pred.numpy(), palette)
            drawn.append(name)

    metrics = evaluate(model, val_set, config, num_classes, on_batch=draw,
                       confusion_png=out_dir / "confusion_matrix.png", class_names=classes)
    plot_training_curve(out_dir / "log.jsonl", out_dir / "training_curve.png")
    (out_dir / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2))
    total = time.perf_counter() - start
    print(format_table(metrics, classes))
    print(f"[demo] mIoU {metrics['mIoU']:.4f} on {len(val_set)} validation images; "
          f"training {train_time / 60:.1f} min, total {total / 60:.1f} min")
    print(f"[demo] wrote {out_dir}/: {_final_checkpoint(out_dir).name} (+ .state.pt), best.safetensors, config.yaml, "
          f"log.jsonl, tensorboard/, training_curve.png, confusion_matrix.png, metrics.json, "
          f"overlays/ ({len(drawn)} images: input | ground truth | prediction)")
    return 0


def _final_checkpoint(out_dir: Path) -> Path:
    latest = json.loads((out_dir / "latest.json").read_text())
    return out_dir / latest["weights"]
