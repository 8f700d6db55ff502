"""Mask R-CNN checkpoints of torchvision (`maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth`, `..._v2_coco-73cbd019.pth`) ->
seglab checkpoints of `mask_rcnn_r50_fpn` / `_v2`.

The seglab model *is* torchvision's module, so the keys are kept as they are; what the conversion adds is the check
that every tensor fits the registered model (the COCO checkpoints have FrozenBatchNorm2d bodies: `frozen_bn=True`, the
default) and the class count read from the box predictor (91 for COCO, background included), recorded in the
checkpoint's metadata by `seglab convert`.
"""

from __future__ import annotations

import torch

from seglab.convert.common import ConversionResult, SourceKeys, TargetDict, finalize

CLASS_KEY = "roi_heads.box_predictor.cls_score.weight"


def convert_mask_rcnn_torchvision(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """A torchvision `maskrcnn_resnet50_fpn(_v2)` state dict as the weights of `model_name`."""
    if model_name not in ("mask_rcnn_r50_fpn", "mask_rcnn_r50_fpn_v2"):
        raise ValueError(f"source 'torchvision' holds torchvision's ResNet-50 Mask R-CNNs (mask_rcnn_r50_fpn, "
                         f"mask_rcnn_r50_fpn_v2), not {model_name!r}")
    if CLASS_KEY not in state_dict:
        raise ValueError(f"{origin}: no {CLASS_KEY}; expected a torchvision Mask R-CNN state dict")
    source = SourceKeys(state_dict, origin)
    target = TargetDict()
    for key in source.keys():
        target.put(key, source.take(key), key)
    return finalize(source, target, model_name, int(state_dict[CLASS_KEY].shape[0]), {})
