"""Mask R-CNN, then BPR on its coarse masks, on the synthetic instance shapes: mask AP and boundary quality before
and after refinement (issue 9, must-have 5).

Steps (all on CPU, seeded):
1. `generate_shapes_instances` writes `--n-train` / `--n-val` images of `--size` px (COCO JSON + PNG).
2. Mask R-CNN (`seglab.instance.mask_rcnn.build_mask_rcnn`, torchvision's model, random init: no pretrained
   weights are available offline, so trainable BatchNorm and all ResNet stages train) is trained with a plain loop
   here: SGD (momentum 0.9) or AdamW (`--det-optimizer`), weight decay 1e-4, linear warm-up, step decay at 75 %,
   gradient-norm clip, random horizontal flips, `--det-batch` images per step; `--anchor-sizes` sets the RPN's.
3. Its predictions (`predict_instances`) on the training images are the coarse masks for BPR; on the validation
   images they are the masks to refine.
4. BPR (`train_bpr`: official sampling, IoU > 0.5 filter, dataset NMS 0.25, SGD 0.01 / 0.9 / 5e-4 with poly 0.9,
   flips) is trained on the training coarse masks, then `refine_dataset` refines the validation masks.
   With `--coarse-source gt_grid` steps 2-3 are replaced by a stand-in: GT masks passed through a box grid
   (28 x 28 at the detector's scale: what Mask R-CNN's mask head resolution loses), to isolate BPR from detector
   quality (the table row says which source was used).
5. `compare_before_after`: COCO mask AP (segm), Boundary AP and the mean boundary IoU of matched instances, before
   and after, printed as a markdown table row and written to `--out` (JSON).

Mask R-CNN runs at `--det-size` (default 128) on `--size` images (default 256): its 28 x 28 masks are pasted
back at twice its scale, so the coarse boundaries have something for BPR to fix (at full scale, 28 x 28 masks
would nearly match the small synthetic objects). Deviation from the official BPR setup, because the synthetic
images are small: the patch size is `--patch-size` (default 32 px on 256 px images instead of 64 px on
1024 x 2048) and the network input `--input-size` keeps the official 1:2 patch-to-input ratio (64 instead of 128).
The defaults take about 20 minutes on 2 CPU cores, but the detector they train barely detects (mask AP 0.3):
torchvision's default anchors (32-512 px) are too large for these objects at 128 px. The run recorded in
docs/benchmarks.md (58 minutes: mask AP 6.3 -> 7.0, Boundary AP 2.7 -> 3.8 after BPR) is the second command.

    OMP_NUM_THREADS=2 python benchmarks/bpr_shapes_experiment.py --threads 2 --work-dir runs/bpr_shapes
    OMP_NUM_THREADS=2 python benchmarks/bpr_shapes_experiment.py --threads 2 --work-dir runs/bpr_shapes \
        --n-train 96 --n-val 16 --det-iters 900 --det-optimizer adamw --det-lr 2e-4 --det-warmup 20 \
        --anchor-sizes 16 32 64 128 256 --bpr-iters 400 --log-every 50
    # smoke test:
    python benchmarks/bpr_shapes_experiment.py --n-train 4 --n-val 2 --size 96 --det-size 96 --det-iters 2 --bpr-iters 2
    python benchmarks/bpr_shapes_experiment.py --coarse-source gt_grid --n-train 4 --n-val 2 --size 96 --bpr-iters 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from seglab.checkpoint import read_checkpoint_meta, save_model
from seglab.data.coco_instances import CocoInstances, RandomHorizontalFlip
from seglab.data.synthetic_instances import generate_shapes_instances
from seglab.engine.refine import train_bpr
from seglab.instance.bpr_dataset import compare_before_after, refine_dataset
from seglab.metrics_instance import masks_to_predictions
from seglab.registry import load_model_weights


def train_detector(args: argparse.Namespace, train_set: CocoInstances, log) -> torch.nn.Module:
    """Mask R-CNN trained from scratch with a plain SGD loop (see the module docstring)."""
    from seglab.instance.mask_rcnn import build_mask_rcnn  # the instance package's Mask R-CNN (lazy: heavy import)

    torch.manual_seed(args.seed)
    extra = {} if args.anchor_sizes is None else {"anchor_sizes": tuple(args.anchor_sizes)}
    model = build_mask_rcnn(args.det_model, train_set.num_classes, min_size=args.det_size, max_size=args.det_size,
                            frozen_bn=False, trainable_layers=5, **extra)
    # torchvision's RoI sampler draws 512 RoIs per image by default; fewer keep CPU steps short on small images
    model.roi_heads.fg_bg_sampler.batch_size_per_image = args.roi_batch
    params = [p for p in model.parameters() if p.requires_grad]
    if args.det_optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=args.det_lr, weight_decay=1e-4)
    else:
        optimizer = torch.optim.SGD(params, lr=args.det_lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    train_set.transforms = RandomHorizontalFlip(0.5, generator)
    warmup = min(args.det_warmup, args.det_iters)
    model.train()
    order: list[int] = []
    recent: list[float] = []
    for it in range(args.det_iters):
        lr = args.det_lr * (0.1 if it >= 0.75 * args.det_iters else 1.0)
        if it < warmup:
            lr *= 0.001 + (1 - 0.001) * it / warmup
        for group in optimizer.param_groups:
            group["lr"] = lr
        if len(order) < args.det_batch:
            order += torch.randperm(len(train_set), generator=generator).tolist()
        samples = [train_set[order.pop(0)] for _ in range(args.det_batch)]
        images = [image for image, _ in samples]
        targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for _, t in samples]
        losses = model(images, targets)
        loss = sum(losses.values())
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"Mask R-CNN loss is {value} at step {it}; lower --det-lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        recent.append(value)
        if (it + 1) % args.log_every == 0 or it + 1 == args.det_iters:
            log(f"mask r-cnn step {it + 1}/{args.det_iters} loss {sum(recent) / len(recent):.3f} lr {lr:.2e}")
            recent = []
    train_set.transforms = None
    return model.eval()


def load_detector(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    """A Mask R-CNN from a seglab checkpoint (e.g. `seglab train` on configs/mask_rcnn/*shapes_instances.yaml, or a
    previous run of this script), set to detect at `--det-size`."""
    from seglab.instance.mask_rcnn import build_mask_rcnn

    meta = read_checkpoint_meta(args.det_checkpoint)
    if meta.num_classes not in (None, num_classes):
        raise SystemExit(f"{args.det_checkpoint} has {meta.num_classes} classes; the shapes data needs {num_classes}")
    model = build_mask_rcnn(meta.model, num_classes, **meta.overrides)
    load_model_weights(model, args.det_checkpoint)
    # torchvision's GeneralizedRCNNTransform: the test-time resize follows its last min_size entry and max_size
    model.transform.min_size = (args.det_size,)
    model.transform.max_size = args.det_size
    return model.eval()


def predict_split(model: torch.nn.Module, dataset: CocoInstances) -> tuple[list[torch.Tensor], list[dict], list]:
    """uint8 images, predictions and targets of every image of a split."""
    from seglab.instance.mask_rcnn import predict_instances

    images, preds, targets = [], [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        preds.append(predict_instances(model, image))
        images.append((image * 255).round().to(torch.uint8))
        targets.append(target)
    return images, preds, targets


def coarse_from_gt(dataset: CocoInstances, grid: int) -> tuple[list[torch.Tensor], list[dict], list]:
    """Stand-in coarse masks without a detector: each GT instance's box crop area-resized to grid x grid and
    bilinearly back, thresholded at 0.5 (what a grid x grid mask head loses), score 1, GT label."""
    images, preds, targets = [], [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        masks = target["masks"].bool()
        coarse = torch.zeros_like(masks)
        for k, box in enumerate(target["boxes"].tolist()):
            x0, y0 = int(box[0]), int(box[1])
            x1, y1 = max(math.ceil(box[2]), x0 + 1), max(math.ceil(box[3]), y0 + 1)
            crop = masks[k, y0:y1, x0:x1].float()[None, None]
            small = F.interpolate(crop, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True)
            back = F.interpolate(small, size=crop.shape[-2:], mode="bilinear", align_corners=False)
            coarse[k, y0:y1, x0:x1] = back[0, 0] > 0.5
        images.append((image * 255).round().to(torch.uint8))
        preds.append({"masks": coarse, "labels": target["labels"], "scores": torch.ones(len(masks)),
                      "boxes": target["boxes"]})
        targets.append(target)
    return images, preds, targets


def to_coco(dataset: CocoInstances, preds: list[dict], masks: list[torch.Tensor] | None = None) -> list[dict]:
    """COCO result dicts of a split's predictions (with `masks` replacing the predicted masks when given)."""
    out: list[dict[str, Any]] = []
    for index, pred in enumerate(preds):
        m = pred["masks"] if masks is None else masks[index]
        cat_ids = [dataset.label_to_cat_id[int(label)] for label in pred["labels"]]
        out += masks_to_predictions(m, pred["scores"].tolist(), cat_ids, dataset.image_ids[index])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bpr_shapes"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="image side (BPR and the evaluation work at it)")
    parser.add_argument("--det-size", type=int, default=128,
                        help="Mask R-CNN's min_size = max_size: it detects at this scale and its 28x28 masks are "
                        "pasted back at --size, so boundaries come out coarse")
    parser.add_argument("--coarse-source", choices=("mask_rcnn", "gt_grid"), default="mask_rcnn",
                        help="mask_rcnn: the experiment; gt_grid: GT masks through a --coarse-grid mask head "
                        "resolution, no detector (to isolate BPR, or to smoke-test the BPR half)")
    parser.add_argument("--coarse-grid", type=int, default=None,
                        help="gt_grid box grid; default 28 x det-size / size (Mask R-CNN's 28x28 at its scale)")
    parser.add_argument("--det-model", default="mask_rcnn_r50_fpn")
    parser.add_argument("--det-checkpoint", type=Path, default=None,
                        help="use this seglab Mask R-CNN checkpoint instead of training one here")
    parser.add_argument("--det-iters", type=int, default=300)
    parser.add_argument("--det-batch", type=int, default=2)
    parser.add_argument("--det-lr", type=float, default=0.02)
    parser.add_argument("--det-optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--anchor-sizes", type=int, nargs=5, default=None,
                        help="RPN anchor sides per FPN level (default torchvision's 32..512)")
    parser.add_argument("--det-warmup", type=int, default=50)
    parser.add_argument("--roi-batch", type=int, default=64)
    parser.add_argument("--bpr-variant", default="bpr_hrnet18s")
    parser.add_argument("--bpr-iters", type=int, default=300)
    parser.add_argument("--bpr-batch", type=int, default=16)
    parser.add_argument("--bpr-lr", type=float, default=0.01)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--nms-iou", type=float, default=0.55, help="patch NMS at refinement (Cityscapes 0.55)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default WORK_DIR/results.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)

    root = generate_shapes_instances(args.work_dir / "data", args.n_train, args.n_val, size=args.size, seed=args.seed)
    train_set = CocoInstances(root / "annotations" / "instances_train.json", root / "images" / "train",
                              skip_empty=True)
    val_set = CocoInstances(root / "annotations" / "instances_val.json", root / "images" / "val")
    log(f"data: {len(train_set)} train / {len(val_set)} val images of {args.size} px at {root}")

    if args.coarse_source == "mask_rcnn":
        if args.det_checkpoint is not None:
            detector = load_detector(args, train_set.num_classes)
            log(f"Mask R-CNN loaded from {args.det_checkpoint}")
        else:
            detector = train_detector(args, train_set, log)
            save_model(args.work_dir / "mask_rcnn.safetensors", detector)  # reusable with --det-checkpoint
        t_det = time.perf_counter() - start
        train_images, train_preds, train_targets = predict_split(detector, train_set)
        val_images, val_preds, _ = predict_split(detector, val_set)
    else:
        t_det = 0.0
        if args.coarse_grid is None:
            args.coarse_grid = max(2, round(28 * args.det_size / args.size))
        train_images, train_preds, train_targets = coarse_from_gt(train_set, args.coarse_grid)
        val_images, val_preds, _ = coarse_from_gt(val_set, args.coarse_grid)
    log(f"predicted: {sum(len(p['scores']) for p in train_preds)} train / "
        f"{sum(len(p['scores']) for p in val_preds)} val instances")

    t0 = time.perf_counter()
    try:
        bpr = train_bpr(train_images, train_preds, train_targets, variant=args.bpr_variant, iters=args.bpr_iters,
                        batch_size=args.bpr_batch, lr=args.bpr_lr, patch_size=args.patch_size,
                        input_size=args.input_size, work_dir=args.work_dir / "bpr", seed=args.seed, log=log,
                        log_every=args.log_every)
    except ValueError as exc:
        if "no training patches" not in str(exc):
            raise
        raise SystemExit(f"BPR has nothing to train on: {exc}. The detector's training-set masks must overlap "
                         "the ground truth (IoU > 0.5); train Mask R-CNN longer (--det-iters).") from None
    t_bpr = time.perf_counter() - t0
    timings: dict[str, float] = {}
    refined = refine_dataset(bpr, val_images, val_preds, nms_iou=args.nms_iou, patch_size=args.patch_size,
                             timings=timings)
    changed = sum(int((r != p["masks"]).sum()) for r, p in zip(refined, val_preds, strict=True))
    log(f"refined {len(refined)} val images ({changed} pixels changed; extract {timings.get('extract', 0):.2f}s, "
        f"network {timings.get('network', 0):.2f}s, paste {timings.get('paste', 0):.2f}s)")

    result = compare_before_after(val_set.ann_file, to_coco(val_set, val_preds), to_coco(val_set, val_preds, refined))
    before, after, delta = result["before"], result["after"], result["delta"]
    summary = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "seconds": {"total": time.perf_counter() - start, "mask_rcnn_train": t_det, "bpr_train": t_bpr,
                           **{f"refine_{k}": v for k, v in timings.items()}},
               "pixels_changed": changed, **result}
    out = args.out or args.work_dir / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))

    def pct(v: float) -> str:
        return "nan" if math.isnan(v) else f"{100 * v:.1f}"

    def signed(v: float) -> str:
        return "nan" if math.isnan(v) else f"{100 * v:+.1f}"

    print("\n| setting | mask AP before | after | Δ | Boundary AP before | after | Δ | matched boundary IoU before "
          "| after | Δ | matched |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    if args.coarse_source == "gt_grid":
        source = f"GT via {args.coarse_grid}x{args.coarse_grid} grid"
    elif args.det_checkpoint is not None:
        source = f"Mask R-CNN {args.det_checkpoint.name} at {args.det_size}px"
    else:
        source = f"{args.det_model} at {args.det_size}px {args.det_iters} it"
    print(f"| shapes {args.size}px, {args.n_train}/{args.n_val} img, {source}, "
          f"{args.bpr_variant} {args.bpr_iters} it, P {args.patch_size} | {pct(before['segm_AP'])} | "
          f"{pct(after['segm_AP'])} | {signed(delta['segm_AP'])} | {pct(before['boundary_AP'])} | "
          f"{pct(after['boundary_AP'])} | {signed(delta['boundary_AP'])} | {pct(before['matched_boundary_iou'])} | "
          f"{pct(after['matched_boundary_iou'])} | {signed(delta['matched_boundary_iou'])} | "
          f"{int(before['matched_count'])} / {int(after['matched_count'])} |")
    log(f"results written to {out}")


if __name__ == "__main__":
    main()
