"""BPR over datasets: patch sets for training (`build_patch_set`), BPR checkpoints (`save_bpr` / `load_bpr`), refining
every image of a dataset (`refine_dataset`) and COCO / boundary evaluation of coarse against refined masks
(`matched_boundary_iou`, `compare_before_after`). Training is `seglab.engine.refine.train_bpr`.

Images given to these functions are RGB in 0-255, (3, H, W), uint8 or float (what `normalize_image` takes).
Masks per image come as torchvision-style dicts: `masks` (N, H, W) bool / uint8, `labels` (N,) and, for ground
truth, optionally `iscrowd` (N,).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch

from seglab.checkpoint import read_checkpoint_meta, save_weights
from seglab.instance.bpr import (
    BPR_VARIANTS,
    NMS_IOU_DATASET,
    NMS_IOU_INFERENCE,
    PATCH_SIZE,
    BPRNet,
    PatchSet,
    build_bpr,
    concat_patch_sets,
    extract_training_patches,
    normalize_image,
    refine,
)
from seglab.metrics_instance import boundary_iou, coco_evaluate
from seglab.registry import load_model_weights

WEIGHTS_NAME = "bpr.safetensors"
_TASK_KEY = "seglab_task"
_TASK = "bpr"
_FUSE_KEY = "fuse_upsample"

InstanceDict = Mapping[str, torch.Tensor]


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


def save_bpr(path: str | Path, model: BPRNet, variant: str) -> None:
    """Writes the network as a seglab safetensors checkpoint (atomic), naming the variant, the input size and the
    HRNet fuse upsampling."""
    if variant not in BPR_VARIANTS:
        raise KeyError(f"unknown BPR variant {variant!r}; available: {', '.join(BPR_VARIANTS)}")
    save_weights(path, model.state_dict(), variant, 2, extra=bpr_meta(model))


def bpr_meta(model: BPRNet) -> dict[str, str]:
    """The checkpoint metadata of a BPR network (task, input size, fuse upsampling)."""
    return {_TASK_KEY: _TASK, "input_size": str(model.input_size),
            _FUSE_KEY: getattr(model, "fuse_upsample", "bilinear_scale")}


def load_bpr(path: str | Path, variant: str | None = None) -> BPRNet:
    """Rebuilds a BPR network from a `save_bpr` checkpoint, in eval mode.

    `variant` None takes it from the file; a given one must match the file's. Errors name the file: not a
    safetensors file, not a BPR checkpoint, another variant, or tensors that do not fit.
    """
    meta = read_checkpoint_meta(path)
    if meta.extra.get(_TASK_KEY) != _TASK or meta.model not in BPR_VARIANTS:
        raise ValueError(f"{path} is not a BPR checkpoint: it holds model {meta.model!r} (BPR variants: "
                         f"{', '.join(BPR_VARIANTS)}; written by seglab.engine.refine.save_bpr)")
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
