"""Mask R-CNN prediction and COCO evaluation; the networks (torchvision's, seglab's options) are
`seglab.models.mask_rcnn`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from seglab.metrics_instance import coco_evaluate, masks_to_predictions
from seglab.models.mask_rcnn import (  # noqa: F401  (the networks, re-exported with the inference around them)
    MASK_RCNN_VARIANTS,
    MaskRCNNOptions,
    MaskRCNNVariant,
    SwinFPN,
    build_mask_rcnn,
    resolve_mask_rcnn_options,
)

MASK_THRESHOLD = 0.5  # mask probability above which a pixel belongs to the instance (torchvision / detectron2)


# ---------------------------------------------------------------------------------------------------- inference
def _as_float_image(image: torch.Tensor) -> torch.Tensor:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W) RGB, got shape {tuple(image.shape)}")
    # uint8 0-255 or float 0-1: torchvision's transform normalises 0-1 images with the ImageNet statistics
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


@torch.no_grad()
def predict_instances(
    model: nn.Module, image: torch.Tensor, mask_threshold: float = MASK_THRESHOLD
) -> dict[str, torch.Tensor]:
    """Detects the instances of one image.

    Args:
        model: a torchvision Mask R-CNN (run in eval mode; its mode is restored afterwards).
        image: (3, H, W) RGB, uint8 0-255 or float 0-1, on the model's device.
        mask_threshold: mask probabilities above it are foreground.

    Returns:
        `masks` (N, H, W) bool at the input size, `boxes` (N, 4) float xyxy in pixels, `labels` (N,) int64
        contiguous labels (1..K), `scores` (N,) float, sorted by decreasing score (torchvision's order).
    """
    was_training = model.training
    model.eval()
    try:
        out = model([_as_float_image(image)])[0]
    finally:
        model.train(was_training)
    return {"masks": out["masks"][:, 0] > mask_threshold, "boxes": out["boxes"], "labels": out["labels"],
            "scores": out["scores"]}


@torch.no_grad()
def evaluate_instances(
    model: nn.Module,
    dataset,
    device: torch.device | str = "cpu",
    iou_types: Iterable[str] = ("segm", "bbox", "boundary"),
    refine_masks: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    mask_threshold: float = MASK_THRESHOLD,
) -> dict[str, float]:
    """COCO AP of `model` on a `CocoInstances` dataset (every image, crowd regions read from its JSON).

    Args:
        model: a torchvision Mask R-CNN.
        dataset: `seglab.data.coco_instances.CocoInstances` (its `ann_file` is the ground truth).
        device: where the model runs.
        iou_types: any of "segm", "bbox", "boundary" (see `coco_evaluate`).
        refine_masks: optional `refine_masks(image (3, H, W) float 0-1, masks (N, H, W) bool) -> masks`, applied
            to each image's predicted masks before scoring (e.g. BPR); boxes keep the detector's.
        mask_threshold: mask probability threshold.

    Returns:
        `coco_evaluate`'s dict: `{iou_type}_{AP, AP50, AP75, APs, APm, APl}` as fractions, NaN where undefined.
    """
    predictions: list[dict[str, Any]] = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        image = image.to(device)
        out = predict_instances(model, image, mask_threshold)
        masks = out["masks"]
        if refine_masks is not None and len(masks):
            masks = refine_masks(image, masks)
        image_id = int(target["image_id"])
        cat_ids = [dataset.label_to_cat_id[int(label)] for label in out["labels"]]
        scores = out["scores"].tolist()
        dets = masks_to_predictions(masks.cpu(), scores, cat_ids, image_id)
        for det, box in zip(dets, out["boxes"].cpu().tolist(), strict=True):
            det["bbox"] = [box[0], box[1], box[2] - box[0], box[3] - box[1]]  # COCO x, y, w, h
        predictions += dets
    return coco_evaluate(dataset.ann_file, predictions, iou_types)
