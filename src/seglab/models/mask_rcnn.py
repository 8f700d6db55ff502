"""Mask R-CNN from torchvision's detection models, with seglab's options, prediction and COCO evaluation around it.

The networks are torchvision's own (`torchvision.models.detection.maskrcnn_resnet50_fpn` and `_v2`: RPN, RoIAlign,
box and mask heads, the resize-and-normalise transform); nothing of them is re-implemented here. What seglab adds:

- variants as data (`MASK_RCNN_VARIANTS`) and one option set (`MaskRCNNOptions`) for all;
- `mask_rcnn_swin_t_fpn`: seglab's Swin-T backbone under torchvision's `FeaturePyramidNetwork` (with the max-pool
  P6 level, as in the ResNet builds) and torchvision's `MaskRCNN` heads (randomly initialised; ImageNet Swin
  weights are not wired to this model yet);
- the backbone layout as an option, because torchvision decides it from whether pretrained weights are requested:
  `frozen_bn` (FrozenBatchNorm2d in the ResNet body, the layout of torchvision's COCO checkpoints, of detectron2
  and of mmdet) and `trainable_layers` (ResNet stages that train, counted from the top; torchvision's rule);
- `predict_instances` (binary masks at the input size) and `evaluate_instances` (COCO mask / box / Boundary AP via
  `seglab.metrics_instance.coco_evaluate`).

Parameter counts (measured here): `mask_rcnn_r50_fpn` at 91 classes has 44,401,393 parameters with the frozen-BN
body (torchvision's published figure for its COCO weights) and 44,454,513 with trainable BatchNorm (53,120 BN
affine parameters more); `mask_rcnn_r50_fpn_v2` has 46,359,409 with trainable BatchNorm (torchvision's figure).

Weights: the model *is* torchvision's module, so a torchvision checkpoint's state dict (e.g.
`maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth`) has exactly its keys. It loads into the `frozen_bn=True` build with
`model.load_state_dict(torch.load(path, weights_only=True))`, or through `train.init_from` (tensors that fit by name
and shape; the class-dependent `cls_score`, `bbox_pred` and `mask_fcn_logits` are skipped at another class count).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from seglab.backbones.swin import SWIN_CONFIGS, SwinTransformer
from seglab.models.spec import ModelSpec

# ResNet stages from the top, torchvision's `_resnet_fpn_extractor` order (all 5 also train the stem's bn1)
_RESNET_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")
_FPN_LEVELS = 5  # "0".."3" and "pool" in every variant
_ASPECT_RATIOS = (0.5, 1.0, 2.0)  # torchvision's RPN default


class SwinFPN(nn.Module):
    """A seglab Swin backbone under torchvision's FPN: the `backbone` torchvision's `MaskRCNN` takes.

    Returns the FPN levels as torchvision's ResNet-FPN does (`"0"`..`"3"` at strides 4-32, `"pool"` at 64), each
    with `out_channels` channels.
    """

    def __init__(self, body: SwinTransformer, out_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork([f.channels for f in body.feature_info], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        # the body returns channels-last memory in NCHW shape; the FPN convs take any layout
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def _mask_rcnn_swin_t_fpn(weights=None, weights_backbone=None, num_classes: int = 91, **kwargs: Any) -> MaskRCNN:
    """torchvision's `MaskRCNN` on `SwinFPN(Swin-T)`, with the factories' signature (no weights to load)."""
    if weights is not None or weights_backbone is not None:
        raise ValueError("mask_rcnn_swin_t_fpn has no torchvision weights")
    body = SwinTransformer(SWIN_CONFIGS["t"], drop_path_rate=0.2)  # Swin's Mask R-CNN T setting
    return MaskRCNN(SwinFPN(body), num_classes=num_classes, **kwargs)


@dataclass(frozen=True)
class MaskRCNNVariant:
    """One Mask R-CNN: the factory that builds it (torchvision's signature), its published parameter count (None:
    no published figure for this build) and whether its body is a torchvision ResNet (`frozen_bn` and
    `trainable_layers` apply to those only)."""

    factory: Callable[..., MaskRCNN]
    description: str
    published_params: int | None
    resnet: bool = True


MASK_RCNN_VARIANTS: dict[str, MaskRCNNVariant] = {
    "mask_rcnn_r50_fpn": MaskRCNNVariant(
        maskrcnn_resnet50_fpn, "Mask R-CNN ResNet-50-FPN (He et al. 2017), torchvision maskrcnn_resnet50_fpn",
        44_401_393),
    "mask_rcnn_r50_fpn_v2": MaskRCNNVariant(
        maskrcnn_resnet50_fpn_v2, "Mask R-CNN ResNet-50-FPN v2 (Li et al. 2021 ViTDet-style heads with BN), "
        "torchvision maskrcnn_resnet50_fpn_v2", 46_359_409),
    "mask_rcnn_swin_t_fpn": MaskRCNNVariant(
        _mask_rcnn_swin_t_fpn, "Mask R-CNN with a seglab Swin-T backbone, torchvision FPN and heads", None,
        resnet=False),
}


@dataclass
class MaskRCNNOptions:
    """Constructor options of every Mask R-CNN variant (`model.overrides` in a run config).

    Attributes:
        min_size: shorter image side after torchvision's resize; a list trains at a size drawn per image from
            it (multi-scale training) and tests at its last entry.
        max_size: cap on the longer side after the resize.
        frozen_bn: FrozenBatchNorm2d in the ResNet body (fixed statistics and affine: the layout of torchvision's
            COCO checkpoints; fine-tuning from them). False: trainable BatchNorm2d (training from scratch).
        trainable_layers: ResNet stages that train, from the top (0-5; 3 is torchvision's fine-tuning default,
            stem and layer1 frozen; 5 trains everything).
        box_score_thresh: detections scoring below this are dropped at inference.
        box_detections_per_img: at most this many detections per image at inference.
        box_batch_size_per_image: RoIs sampled per image to train the box and mask heads (torchvision and
            detectron2: 512); fewer make tiny CPU runs fast.
        anchor_sizes: RPN anchor side per FPN level, 5 values (strides 4-64; aspect ratios 0.5, 1, 2 at each).
            None: torchvision's (32, 64, 128, 256, 512), which suit COCO-sized objects; small images with small
            objects need smaller anchors, or the RPN finds almost no positive anchors.
    """

    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333
    frozen_bn: bool = True
    trainable_layers: int = 3
    box_score_thresh: float = 0.05
    box_detections_per_img: int = 100
    box_batch_size_per_image: int = 512
    anchor_sizes: tuple[int, ...] | None = None
    num_classes: int = 91  # classes with the background (91 for COCO, 9 for the 8 Cityscapes instance classes)


def resolve_mask_rcnn_options(overrides: dict[str, Any]) -> MaskRCNNOptions:
    """`MaskRCNNOptions` from a dict, with an error that lists the valid keys."""
    names = [f.name for f in dataclasses.fields(MaskRCNNOptions)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"unknown Mask R-CNN option(s) {unknown} (model.overrides); valid: {', '.join(names)}")
    values = dict(overrides)
    for key in ("min_size", "anchor_sizes"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    options = MaskRCNNOptions(**values)
    if not 0 <= options.trainable_layers <= 5:
        raise ValueError(f"model.overrides.trainable_layers must lie in 0..5, got {options.trainable_layers}")
    sizes = options.anchor_sizes
    if sizes is not None and (len(sizes) != _FPN_LEVELS or any(int(v) != v or v <= 0 for v in sizes)):
        raise ValueError(f"model.overrides.anchor_sizes must be {_FPN_LEVELS} positive integers (one per FPN level, "
                         f"strides 4-64), got {list(sizes)}")
    return options


def _freeze_bn(module: nn.Module) -> None:
    """Replaces every BatchNorm2d below `module` by a FrozenBatchNorm2d holding the same statistics and affine."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_bn(child)


def build_mask_rcnn(name: str = "mask_rcnn_r50_fpn", num_classes: int = 91, **overrides: Any) -> MaskRCNN:
    """A randomly initialised torchvision Mask R-CNN of a `MASK_RCNN_VARIANTS` entry.

    Args:
        name: variant name.
        num_classes: classes including the background (91 for COCO, 9 for the 8 Cityscapes instance classes).
        **overrides: `MaskRCNNOptions` fields.

    The model carries `model_name`, `num_classes` and `model_overrides`, so `seglab.checkpoint.save_model`
    records how to rebuild it.
    """
    if name not in MASK_RCNN_VARIANTS:
        raise KeyError(f"unknown Mask R-CNN variant {name!r}; available: {', '.join(MASK_RCNN_VARIANTS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too and must be >= 2, got {num_classes}")
    options = resolve_mask_rcnn_options({**overrides, "num_classes": num_classes})
    variant = MASK_RCNN_VARIANTS[name]
    if not variant.resnet and {"frozen_bn", "trainable_layers"} & set(overrides):
        raise ValueError(f"{name}: frozen_bn and trainable_layers apply to ResNet bodies only")
    extra: dict[str, Any] = {}
    if options.anchor_sizes is not None:
        extra["rpn_anchor_generator"] = AnchorGenerator(tuple((int(v),) for v in options.anchor_sizes),
                                                        (_ASPECT_RATIOS,) * _FPN_LEVELS)
    # weights=None: torchvision then ignores trainable_backbone_layers and uses trainable BN; both are set below
    model = variant.factory(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=options.min_size,
        max_size=options.max_size, box_score_thresh=options.box_score_thresh,
        box_detections_per_img=options.box_detections_per_img,
        box_batch_size_per_image=options.box_batch_size_per_image, **extra)
    if variant.resnet:
        body = model.backbone.body
        if options.frozen_bn:
            _freeze_bn(body)
        train = list(_RESNET_STAGES[: options.trainable_layers]) + (["bn1"] if options.trainable_layers == 5 else [])
        for param_name, param in body.named_parameters():
            if not any(param_name.startswith(stage) for stage in train):
                param.requires_grad_(False)
    model.model_name = name
    model.num_classes = num_classes
    model.model_overrides = dict(overrides)
    return model


def build_mask_rcnn_model(name: str, options: MaskRCNNOptions) -> MaskRCNN:
    """The registered builder: `build_mask_rcnn` from a variant name and a `MaskRCNNOptions`."""
    defaults = MaskRCNNOptions()
    changed = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
               if f.name != "num_classes" and getattr(options, f.name) != getattr(defaults, f.name)}
    return build_mask_rcnn(name, options.num_classes, **changed)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        _name,
        build=build_mask_rcnn_model,
        variant=_name,
        options=MaskRCNNOptions,
        published_params_m=None if _variant.published_params is None else _variant.published_params / 1e6,
        description=_variant.description,
        task="instance",
    )
    for _name, _variant in MASK_RCNN_VARIANTS.items()
)
