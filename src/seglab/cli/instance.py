"""Instance segmentation commands: `seglab train / eval / predict` for Mask R-CNN runs (called by
`seglab.cli.semantic` when the config or checkpoint is an instance one) and `seglab refine` (BPR).

Imported only when an instance command runs; seglab's instance code is imported inside the functions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from seglab.cli.common import choose_device, collect_inputs, jsonable

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------------------------------------------- train / eval
def _format_ap(metrics: dict) -> str:
    """One row per IoU type (segm, bbox, boundary) with AP, AP50, AP75, APs, APm, APl in percent."""
    from seglab.metrics_instance import AP_NAMES

    types = [t for t in ("segm", "bbox", "boundary") if f"{t}_AP" in metrics]
    lines = [f"{'':<10}" + "".join(f"{n:>8}" for n in AP_NAMES)]
    for t in types:
        cells = (metrics[f"{t}_{n}"] for n in AP_NAMES)
        lines.append(f"{t:<10}" + "".join(f"{'n/a' if v != v else f'{100 * v:.2f}':>8}" for v in cells))
    return "\n".join(lines)


def train(config, args, resume_changes=None) -> int:
    """`seglab train` for an instance run config."""
    from seglab.engine.instance import run_instance_training
    from seglab.engine.trainer import CheckpointWriteError, NonFiniteLossError

    try:
        _, _, result = run_instance_training(config, resume=args.resume, progress=not args.no_progress,
                                             stop_at=args.stop_at, init_from=args.init_from,
                                             resume_changes=resume_changes)
    except (NonFiniteLossError, CheckpointWriteError) as exc:
        print(f"seglab train: error: {exc}", file=sys.stderr)
        return 1
    if result.final_metrics is not None:
        print(_format_ap(result.final_metrics))
    print(f"checkpoints and logs in {result.work_dir}")
    return 0


def evaluate(config, args) -> int:
    """`seglab eval` for an instance run config: segm, bbox and boundary AP."""
    from seglab.engine.instance import build_instance_split, load_instance_checkpoint
    from seglab.instance.mask_rcnn import evaluate_instances

    device = choose_device(args.device)
    val_set = build_instance_split(config, args.split or config.data.val_split)
    model = load_instance_checkpoint(args.checkpoint).to(device)
    metrics = evaluate_instances(model, val_set, device)
    print(_format_ap(metrics))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(jsonable(metrics), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------- predict
def _instance_map(masks: torch.Tensor, scores: torch.Tensor):
    """(H, W) uint8 map: instance k + 1 where mask k is the highest-scoring mask covering the pixel, else 0."""
    import numpy as np
    import torch

    height, width = masks.shape[-2:]
    out = np.zeros((height, width), np.uint8)
    order = torch.argsort(scores.cpu(), descending=False).tolist()  # low scores first: high ones paint over them
    m = masks.cpu().numpy()
    for k in order:
        out[m[k]] = min(k + 1, 254)  # an indexed PNG holds 255 colours (0..254); more instances share the last
    return out


def _write_instances(out: Path, stem: str, image: torch.Tensor, result: dict, class_names) -> None:
    """`{stem}.png` instance map, `{stem}_overlay.png`, `{stem}_masks.npz` (masks, boxes, labels, scores) and
    `{stem}.json` (per instance: label, class, score, box)."""

    import numpy as np

    from seglab.tools.visualize import make_palette, save_label_png, save_overlay_png

    masks, scores = result["masks"].cpu(), result["scores"].cpu()
    ids = _instance_map(masks, scores)
    palette = make_palette(255)
    # background (0) as the ignore index: black in the map, the plain image in the overlay
    save_label_png(out / f"{stem}.png", ids, palette, ignore_index=0)
    save_overlay_png(out / f"{stem}_overlay.png", image.permute(1, 2, 0).numpy(), ids, palette, ignore_index=0)
    np.savez_compressed(out / f"{stem}_masks.npz", masks=masks.numpy(), boxes=result["boxes"].cpu().numpy(),
                        labels=result["labels"].cpu().numpy(), scores=scores.numpy())
    names = list(class_names) if class_names else None
    records = [{"instance": k + 1, "label": int(label), "class": names[int(label)] if names and label < len(names)
                else str(int(label)), "score": float(score), "box": [float(v) for v in box]}
               for k, (label, score, box) in enumerate(zip(result["labels"].tolist(), scores.tolist(),
                                                            result["boxes"].cpu().tolist(), strict=True))]
    (out / f"{stem}.json").write_text(json.dumps(records, indent=1))


def _keep(result: dict, score_thresh: float) -> dict:
    keep = result["scores"] >= score_thresh
    return {k: v[keep] for k, v in result.items()}


def predict(args) -> int:
    """`seglab predict` with a Mask R-CNN checkpoint or an instance run config."""
    from seglab.data.datasets import read_image
    from seglab.engine.instance import load_instance_checkpoint
    from seglab.instance.mask_rcnn import predict_instances

    device = choose_device(args.device)
    model = load_instance_checkpoint(args.checkpoint).to(device).eval()
    class_names = None
    if args.config:
        from seglab.config import load_config
        from seglab.engine.instance import build_instance_split

        config = load_config(args.config, args.set)
        try:
            class_names = build_instance_split(config, config.data.val_split).class_names
        except Exception:  # the names are a convenience: predicting does not need the dataset
            class_names = None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in collect_inputs(args.inputs)[0]:
        image = read_image(path, max_pixels=args.max_pixels)
        result = _keep(predict_instances(model, image.to(device)), args.score_thresh)
        _write_instances(out, path.stem, image, result, class_names)
        print(f"{path} -> {out / (path.stem + '.png')} ({len(result['scores'])} instances)")
    return 0


# ---------------------------------------------------------------------------------------------------- refine
def _load_bpr(path: str, device: torch.device):
    """A BPR network from a `seglab.engine.refine.save_bpr` checkpoint, in eval mode on `device`."""

    from seglab.instance.bpr_dataset import load_bpr

    return load_bpr(path).to(device).eval()


def _coarse_masks_file(masks_arg: Path, stem: str) -> Path:
    if masks_arg.is_file():
        return masks_arg
    for name in (f"{stem}_masks.npz", f"{stem}.npz"):
        if (masks_arg / name).is_file():
            return masks_arg / name
    raise FileNotFoundError(f"--masks {masks_arg}: no {stem}_masks.npz or {stem}.npz there")


def cmd_refine(args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from seglab.data.datasets import read_image
    from seglab.instance.bpr import normalize_image, refine

    if (args.detector is None) == (args.masks is None):
        raise SystemExit("refine: give exactly one of --detector CKPT (Mask R-CNN) or --masks NPZ_OR_DIR")
    device = choose_device(args.device)
    bpr = _load_bpr(args.bpr, device)
    detector = None
    if args.detector:
        from seglab.engine.instance import load_instance_checkpoint
        from seglab.instance.mask_rcnn import predict_instances

        detector = load_instance_checkpoint(args.detector).to(device).eval()
    inputs = collect_inputs(args.inputs)[0]
    if args.masks and Path(args.masks).is_file() and len(inputs) > 1:
        raise SystemExit("refine: one --masks file fits one image; pass a folder of {stem}_masks.npz for several")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for path in inputs:
        image = read_image(path)
        if detector is not None:
            result = _keep(predict_instances(detector, image.to(device)), args.score_thresh)
            coarse = result["masks"]
        else:
            source = _coarse_masks_file(Path(args.masks), path.stem)
            with np.load(source) as data:
                if "masks" not in data:
                    raise ValueError(f"{source} has no 'masks' array (N, H, W)")
                coarse = torch.from_numpy(data["masks"].astype(bool))
            if coarse.dim() != 3 or tuple(coarse.shape[-2:]) != tuple(image.shape[-2:]):
                raise ValueError(f"{source}: masks {tuple(coarse.shape)} do not fit image {path} "
                                 f"({image.shape[-2]}x{image.shape[-1]}); expected (N, H, W)")
        coarse = coarse.to(device)
        refined = (refine(normalize_image(image.to(device)), coarse, bpr, patch_size=args.patch_size,
                          nms_iou=args.nms_iou, timings=timings) if len(coarse) else coarse)
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        for k, mask in enumerate(refined.cpu().numpy()):
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{k:03d}.png")
        np.savez_compressed(out / f"{path.stem}_refined.npz", masks=refined.cpu().numpy(),
                            coarse=coarse.cpu().numpy())
        changed = int((refined != coarse).sum())
        print(f"{path}: {len(refined)} masks refined, {changed} pixels changed -> {folder}/")
    if timings:
        total = sum(timings.values())
        print("refinement time: " + ", ".join(f"{k} {v:.3f}s" for k, v in timings.items()) + f" (total {total:.3f}s)")
    return 0


