"""Training and evaluating BPR: patch dataset from coarse masks, the refinement net's schedule, checkpoints, and
COCO evaluation of coarse against refined masks.

The schedule is the official one (chenhang98/BPR `configs/bpr/hrnet18s_128.py`, whose `_base_` is mmseg 0.x's
`schedules/schedule_160k.py`): SGD with lr 0.01, momentum 0.9, weight decay 5e-4, poly decay with power 0.9 down to
min_lr 1e-4, no warm-up, 160k iterations at 8 patches per GPU on 4 GPUs (32 per step). What seglab scales down
is only the length (`iters`) and the batch (`batch_size`); the poly curve is stretched over `iters`. lr is not
rescaled with the batch (the official rate, 0.01, is kept as the default). The official network starts from
ImageNet-pretrained HRNet weights (`open-mmlab://msra/hrnetv2_w18_small`); seglab has no such weights for BPR, so
`train_bpr` starts from random initialisation unless `init` names a checkpoint.

Images given to these functions are RGB in 0-255, (3, H, W), uint8 or float (what `normalize_image` takes).
Masks per image come as torchvision-style dicts: `masks` (N, H, W) bool / uint8, `labels` (N,) and, for ground
truth, optionally `iscrowd` (N,).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch

from seglab.checkpoint import atomic_write, read_checkpoint_meta, save_weights
from seglab.instance.bpr import (
    BPR_VARIANTS,
    NMS_IOU_DATASET,
    NMS_IOU_INFERENCE,
    PATCH_SIZE,
    BPRNet,
    PatchDataset,
    PatchSet,
    build_bpr,
    concat_patch_sets,
    extract_training_patches,
    normalize_image,
    refine,
    train_step,
)
from seglab.metrics_instance import boundary_iou, coco_evaluate
from seglab.registry import load_model_weights

# official schedule (mmseg 0.x schedule_160k + BPR data config); see the module docstring
BPR_LR = 0.01
BPR_MOMENTUM = 0.9
BPR_WEIGHT_DECAY = 5e-4
BPR_POLY_POWER = 0.9
BPR_MIN_LR = 1e-4
BPR_OFFICIAL_ITERS = 160_000
BPR_OFFICIAL_BATCH = 32  # 8 patches per GPU x 4 GPUs
WEIGHTS_NAME = "bpr.safetensors"
_TASK_KEY = "seglab_task"
_TASK = "bpr"
_FUSE_KEY = "fuse_upsample"

InstanceDict = Mapping[str, torch.Tensor]


def poly_lr(iteration: int, iters: int, base_lr: float, power: float = BPR_POLY_POWER,
            min_lr: float = BPR_MIN_LR) -> float:
    """mmcv's poly policy: `(base - min) * (1 - it / iters) ** power + min`."""
    progress = min(iteration, iters) / max(iters, 1)
    return (base_lr - min_lr) * (1.0 - progress) ** power + min_lr


def _image_tensor(image: torch.Tensor | np.ndarray, index: int) -> torch.Tensor:
    """(3, H, W) tensor from a CHW tensor or an HWC uint8 array."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {index}: numpy images must be (H, W, 3) RGB, got {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image {index}: expected a (3, H, W) RGB tensor, got {tuple(image.shape)}")
    return image


def _masks_of(entry: InstanceDict | torch.Tensor, index: int, what: str) -> torch.Tensor:
    masks = entry if isinstance(entry, torch.Tensor) else entry.get("masks")
    if masks is None:
        raise ValueError(f"{what} {index} has no 'masks'")
    if masks.dim() == 4 and masks.shape[1] == 1:  # torchvision's (N, 1, H, W) soft masks
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"{what} {index}: masks must be (N, H, W), got {tuple(masks.shape)}")
    return masks.bool() if masks.dtype == torch.bool or masks.dtype == torch.uint8 else masks > 0.5


def build_patch_set(
    images: Sequence[torch.Tensor | np.ndarray],
    coarse: Sequence[InstanceDict],
    gt: Sequence[InstanceDict],
    patch_size: int = PATCH_SIZE,
    nms_iou: float = NMS_IOU_DATASET,
    min_iou: float = 0.5,
) -> PatchSet:
    """The BPR training set over many images: `extract_training_patches` (the official sampling: coarse instances
    with best same-class IoU > `min_iou`, boundary patches kept by NMS at `nms_iou`) per image, concatenated."""
    if not len(images) == len(coarse) == len(gt):
        raise ValueError(f"images, coarse and gt must have one entry per image; got {len(images)}, {len(coarse)}, "
                         f"{len(gt)}")
    sets = []
    for i, (image, c, g) in enumerate(zip(images, coarse, gt, strict=True)):
        img = normalize_image(_image_tensor(image, i))
        cm, gm = _masks_of(c, i, "coarse entry"), _masks_of(g, i, "gt entry")
        if cm.shape[1:] != img.shape[1:] or gm.shape[1:] != img.shape[1:]:
            raise ValueError(f"image {i} is {tuple(img.shape[1:])} but its coarse masks are {tuple(cm.shape[1:])} "
                             f"and its GT masks {tuple(gm.shape[1:])}")
        for entry, what in ((c, "coarse"), (g, "gt")):
            if "labels" not in entry:
                raise ValueError(f"{what} entry {i} has no 'labels' (needed to match coarse and GT classes)")
        sets.append(extract_training_patches(img, cm, c["labels"], gm, g["labels"], g.get("iscrowd"),
                                             patch_size=patch_size, nms_iou=nms_iou, min_iou=min_iou))
    return concat_patch_sets(sets)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless batches of indices: a fresh permutation each epoch, the incomplete tail dropped (every step sees a
    full batch; with fewer samples than `batch_size` each step takes all of them)."""
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start:start + size]


def train_bpr(
    images: Sequence[torch.Tensor | np.ndarray],
    coarse_masks: Sequence[InstanceDict],
    gt: Sequence[InstanceDict],
    *,
    variant: str = "bpr_hrnet18s",
    iters: int = 1000,
    batch_size: int = 8,
    lr: float = BPR_LR,
    momentum: float = BPR_MOMENTUM,
    weight_decay: float = BPR_WEIGHT_DECAY,
    power: float = BPR_POLY_POWER,
    min_lr: float = BPR_MIN_LR,
    patch_size: int = PATCH_SIZE,
    nms_iou: float = NMS_IOU_DATASET,
    input_size: int | None = None,
    flip: bool = True,
    init: str | Path | None = None,
    work_dir: str | Path | None = None,
    seed: int = 0,
    losses: list[float] | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 50,
) -> BPRNet:
    """Trains a BPR refinement network on boundary patches of coarse masks and returns it (in eval mode).

    Args:
        images: training images, RGB 0-255 (3, H, W) tensors or (H, W, 3) uint8 arrays.
        coarse_masks: per image, the instance model's predictions: `masks` (N, H, W) and `labels` (N,).
        gt: per image, ground truth: `masks`, `labels`, optional `iscrowd`.
        variant: `BPR_VARIANTS` key.
        iters: optimisation steps (official: 160,000).
        batch_size: patches per step (official: 32).
        lr, momentum, weight_decay, power, min_lr: SGD and poly schedule (official defaults).
        patch_size: patch side in image pixels (official 64; smaller for tiny images).
        nms_iou: proposal NMS when building the patch set (official 0.25).
        input_size: network input side; default the variant's (128 / 256).
        flip: random horizontal flips (official `RandomFlip`, p = 0.5).
        init: optional BPR checkpoint to start from (`load_bpr`).
        work_dir: if given, the weights are written there as `bpr.safetensors` (atomically) with `train_log.json`.
        seed: seeds initialisation, shuffling and flips.
        losses: if given, receives the loss of every step.
        log: called with a progress line every `log_every` steps.
    """
    if iters < 1 or batch_size < 1:
        raise ValueError(f"iters and batch_size must be >= 1, got {iters} and {batch_size}")
    torch.manual_seed(seed)
    model = load_bpr(init, variant) if init is not None else build_bpr(variant)
    if input_size is not None:
        model.input_size = input_size
    patches = build_patch_set(images, coarse_masks, gt, patch_size, nms_iou)
    n = patches.images.shape[0]
    if n == 0:
        raise ValueError("no training patches: no coarse instance has IoU > 0.5 with a same-class GT instance, or "
                         f"the images are not larger than patch_size {patch_size}")
    generator = torch.Generator().manual_seed(seed)
    dataset = PatchDataset(patches, model.input_size, flip=flip, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    history: list[float] = []
    batches = _batches(n, batch_size, generator)
    for it in range(iters):
        rate = poly_lr(it, iters, lr, power, min_lr)
        for group in optimizer.param_groups:
            group["lr"] = rate
        samples = [dataset[int(k)] for k in next(batches)]
        batch = tuple(torch.stack(parts) for parts in zip(*samples, strict=True))
        loss = train_step(model, optimizer, batch)
        if not math.isfinite(loss):
            raise FloatingPointError(f"BPR training loss is {loss} at step {it}; lower lr (now {rate:g})")
        history.append(loss)
        if log is not None and (it + 1) % log_every == 0:
            recent = history[-log_every:]
            log(f"bpr step {it + 1}/{iters} loss {sum(recent) / len(recent):.4f} lr {rate:.2e} patches {n}")
    if losses is not None:
        losses.extend(history)
    model.eval()
    if work_dir is not None:
        work_dir = Path(work_dir)
        save_bpr(work_dir / WEIGHTS_NAME, model, variant)
        summary = {"variant": variant, "iters": iters, "batch_size": batch_size, "lr": lr, "momentum": momentum,
                   "weight_decay": weight_decay, "power": power, "min_lr": min_lr, "patch_size": patch_size,
                   "nms_iou": nms_iou, "input_size": model.input_size, "flip": flip, "seed": seed, "patches": n,
                   "losses": history}
        atomic_write(work_dir / "train_log.json", lambda tmp: Path(tmp).write_text(json.dumps(summary)))
    return model


# ------------------------------------------------------------------------------------------------ checkpoints
def save_bpr(path: str | Path, model: BPRNet, variant: str) -> None:
    """Writes the network as a seglab safetensors checkpoint (atomic), naming the variant, the input size and the
    HRNet fuse upsampling."""
    if variant not in BPR_VARIANTS:
        raise KeyError(f"unknown BPR variant {variant!r}; available: {', '.join(BPR_VARIANTS)}")
    save_weights(path, model.state_dict(), variant, 2,
                 extra={_TASK_KEY: _TASK, "input_size": str(model.input_size),
                        _FUSE_KEY: getattr(model, "fuse_upsample", "bilinear_scale")})


def load_bpr(path: str | Path, variant: str | None = None) -> BPRNet:
    """Rebuilds a BPR network from a `save_bpr` checkpoint, in eval mode.

    `variant` None takes it from the file; a given one must match the file's. Errors name the file: not a
    safetensors file, not a BPR checkpoint, another variant, or tensors that do not fit.
    """
    meta = read_checkpoint_meta(path)
    if meta.extra.get(_TASK_KEY) != _TASK or meta.model not in BPR_VARIANTS:
        raise ValueError(f"{path} is not a BPR checkpoint: it holds model {meta.model!r} (BPR variants: "
                         f"{', '.join(BPR_VARIANTS)}; written by seglab.instance.bpr_train.save_bpr)")
    if variant is not None and variant != meta.model:
        raise ValueError(f"{path} holds BPR variant {meta.model!r}, not the requested {variant!r}")
    # files written before the fuse upsampling was recorded come from networks built with "nearest"
    model = build_bpr(meta.model, fuse_upsample=meta.extra.get(_FUSE_KEY, "nearest"))
    if "input_size" in meta.extra:
        model.input_size = int(meta.extra["input_size"])
    load_model_weights(model, path)
    return model.eval()


# ------------------------------------------------------------------------------------------------ refinement
def refine_dataset(
    model: torch.nn.Module,
    images: Sequence[torch.Tensor | np.ndarray],
    masks_per_image: Sequence[torch.Tensor | InstanceDict],
    nms_iou: float = NMS_IOU_INFERENCE,
    patch_size: int = PATCH_SIZE,
    batch: int = 64,
    timings: dict[str, float] | None = None,
) -> list[torch.Tensor]:
    """`refine` over a list of images (RGB 0-255): returns the refined (N, H, W) bool masks of each image, in the
    order given (instances keep their index, so scores and labels of the coarse predictions still apply)."""
    if len(images) != len(masks_per_image):
        raise ValueError(f"{len(images)} images but {len(masks_per_image)} mask sets")
    out = []
    for i, (image, entry) in enumerate(zip(images, masks_per_image, strict=True)):
        masks = _masks_of(entry, i, "mask set")
        out.append(refine(normalize_image(_image_tensor(image, i)), masks, model, patch_size=patch_size,
                          nms_iou=nms_iou, batch=batch, timings=timings))
    return out


# ------------------------------------------------------------------------------------------------ evaluation
def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def matched_boundary_iou(
    gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], min_iou: float = 0.5,
    dilation_ratio: float = 0.02,
) -> tuple[float, int]:
    """Mean boundary IoU over matched instances and their count.

    Every non-crowd GT instance is paired with the same-category prediction of highest mask IoU; pairs with mask
    IoU < `min_iou` are left out (unmatched GT). The mean is NaN when nothing matches.
    """
    images = {im["id"]: im for im in gt["images"]}
    preds_by_image: dict[Any, list[Mapping[str, Any]]] = {}
    for p in predictions:
        preds_by_image.setdefault(p["image_id"], []).append(p)
    values: list[float] = []
    gts_by_image: dict[Any, list[Mapping[str, Any]]] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            gts_by_image.setdefault(a["image_id"], []).append(a)
    for image_id, anns in gts_by_image.items():
        preds = preds_by_image.get(image_id, [])
        if not preds:
            continue
        h, w = images[image_id]["height"], images[image_id]["width"]
        g = torch.from_numpy(np.stack([_decode(a["segmentation"], h, w) for a in anns]))
        p = torch.from_numpy(np.stack([_decode(q["segmentation"], h, w) for q in preds]))
        gf, pf = g.flatten(1).float(), p.flatten(1).float()
        inter = gf @ pf.T
        union = gf.sum(1)[:, None] + pf.sum(1)[None, :] - inter
        iou = inter / union.clamp(min=1)
        same = torch.tensor([[a["category_id"] == q["category_id"] for q in preds] for a in anns])
        iou = torch.where(same, iou, torch.full_like(iou, -1.0))
        best, index = iou.max(dim=1)
        keep = best >= min_iou
        if keep.any():
            values += boundary_iou(g[keep], p[index[keep]], dilation_ratio).tolist()
    return (float(np.mean(values)) if values else math.nan), len(values)


def compare_before_after(
    gt_json_or_dict: str | Path | Mapping[str, Any],
    predictions_before: Sequence[Mapping[str, Any]],
    predictions_after: Sequence[Mapping[str, Any]],
    dilation_ratio: float = 0.02,
) -> dict[str, dict[str, float]]:
    """COCO mask AP (`segm_*`) and Boundary AP (`boundary_*`) of coarse and refined predictions, plus the mean
    boundary IoU of matched instances (`matched_boundary_iou`, `matched_count`).

    Returns `{"before": metrics, "after": metrics, "delta": after - before}` (deltas of every numeric key).
    """
    if isinstance(gt_json_or_dict, (str, Path)):
        try:
            gt = json.loads(Path(gt_json_or_dict).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"ground-truth file {gt_json_or_dict} does not exist") from None
    else:
        gt = dict(gt_json_or_dict)
    result: dict[str, dict[str, float]] = {}
    for key, preds in (("before", predictions_before), ("after", predictions_after)):
        metrics = coco_evaluate(gt, list(preds), ("segm", "boundary"), dilation_ratio=dilation_ratio)
        mean, count = matched_boundary_iou(gt, preds, dilation_ratio=dilation_ratio)
        metrics["matched_boundary_iou"] = mean
        metrics["matched_count"] = float(count)
        result[key] = metrics
    result["delta"] = {k: result["after"][k] - result["before"][k] for k in result["before"]}
    return result
