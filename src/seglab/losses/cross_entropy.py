"""Pixel-wise cross-entropy with an ignore index and optional class weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = 255,
    align_corners: bool = False,
) -> torch.Tensor:
    """Cross-entropy averaged over the non-ignored pixels.

    Logits are resized (bilinear) to the label size first, as mmsegmentation does. With class weights each
    pixel's loss is scaled by its class weight and the sum is still divided by the number of non-ignored pixels
    (mmseg's `avg_non_ignore=True`), the behaviour of the class-weighted `CrossEntropyLoss2d` used with SegNeXt.

    Args:
        logits: (B, K, h, w) scores.
        labels: (B, H, W) integer class indices, `ignore_index` for unlabeled pixels.
        class_weights: optional (K,) weights.
        ignore_index: label value excluded from the loss.
        align_corners: of the bilinear resize.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    if class_weights is not None and class_weights.numel() != logits.shape[1]:
        raise ValueError(f"class_weights has {class_weights.numel()} entries but the logits have "
                         f"{logits.shape[1]} classes")
    labels = labels.long()
    # over a (B*H*W, K) view: logits of channels-last models then need no copy, and the upsampling's backward
    # keeps its fast path (the NCHW cross-entropy copied 2x150x512x512 logits every step)
    num_classes = logits.shape[1]
    flat = logits.float().permute(0, 2, 3, 1).reshape(-1, num_classes)
    per_pixel = F.cross_entropy(flat, labels.reshape(-1), weight=class_weights, ignore_index=ignore_index,
                                reduction="none")
    valid = (labels != ignore_index).sum()
    return per_pixel.sum() / valid.clamp(min=1)


def segmentation_loss(
    logits: torch.Tensor,
    aux_logits: list[torch.Tensor],
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    aux_weights: list[float] | tuple[float, ...] = (),
    ignore_index: int = 255,
    align_corners: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Main cross-entropy plus weighted auxiliary-head losses; returns the total and its parts."""
    if len(aux_weights) != len(aux_logits):
        raise ValueError(f"the model has {len(aux_logits)} auxiliary heads but {len(aux_weights)} aux weights "
                         f"were configured (loss.aux_weights)")
    loss = cross_entropy(logits, labels, class_weights, ignore_index, align_corners)
    parts = {"loss_main": loss.item()}
    for i, (aux, weight) in enumerate(zip(aux_logits, aux_weights, strict=True)):
        aux_loss = weight * cross_entropy(aux, labels, class_weights, ignore_index, align_corners)
        parts[f"loss_aux{i}"] = aux_loss.item()
        loss = loss + aux_loss
    return loss, parts
