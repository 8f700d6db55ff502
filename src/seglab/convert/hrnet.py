"""HRNet checkpoints (official HRNet-Semantic-Segmentation, timm) -> seglab.

Official layout (`lib/models/seg_hrnet.py`; the released `.pth` files prefix every key with `model.` and hold the
loss's class weights `loss.criterion.weight`): stem `conv1`, `bn1`, `conv2`, `bn2`; stage 1 `layer1.{k}.conv{1,2,3}`
/ `bn{1,2,3}` / `downsample.{0,1}` (conv, BN); `transition{t}.{i}.{0,1}` (conv, BN of a width-changing existing
branch) or `transition{t}.{i}.{k}.{0,1}` (the stride-2 steps of a new branch); `stage{s}.{m}.branches.{b}.{k}.
conv{1,2}` / `bn{1,2}`; fuse layers `stage{s}.{m}.fuse_layers.{i}.{j}.{0,1}` (1x1 conv, BN of an upsampled term,
j > i) or `stage{s}.{m}.fuse_layers.{i}.{j}.{k}.{0,1}` (the stride-2 steps, j < i); head `last_layer.{0,1,3}`
(1x1 conv with bias, BN, classifier; index 2 is the ReLU).

timm's `hrnet_*` uses the same backbone names (it is the HRNet-Image-Classification code); its ImageNet head
(`incre_modules`, `downsamp_modules`, `final_layer`, `classifier`) is dropped.

Numerics: the official code interpolates bilinearly in the fuse layers and the head, with an `align_corners` that
depends on the code version and, in the HRNet-OCR branch, on the experiment file; the key names are the same
everywhere, so the converter cannot tell: the caller passes `align_corners` (default False, right for every released
checkpoint but two; `seglab convert --set align_corners=true` for those). Read in the official
repository (HRNet-OCR @ 0bbb288, pytorch-v1.1 @ 88419ab, master @ 8037a7f):
- master and pytorch-v1.1 (`F.upsample(..., mode='bilinear')` / `F.interpolate(..., mode='bilinear')` without
  `align_corners`, i.e. False since PyTorch 0.4.0): every checkpoint of their READMEs, i.e. HRNetV2-W48 Cityscapes
  (`hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth`), PASCAL-Context, LIP, and the W18-Small-v1 / v2 Cityscapes
  models: `align_corners=False`.
- HRNet-OCR branch (`align_corners=config.MODEL.ALIGN_CORNERS`, default True; its README: "we use align_corners =
  True"): the non-OCR experiment files for Cityscapes (`hrnet_cs_8090_torch11.pth`), LIP (`hrnet_lip_5583_torch04.pth`)
  and PASCAL-Context (`hrnet_pascal_ctx_5410_torch11.pth`) set `ALIGN_CORNERS: False`; those for ADE20K
  (`hrnet_ade20k_4312_torch04.pth`) and COCO-Stuff (`hrnet_cocostuff_3617_torch04.pth`) keep True.
Both versions were checked numerically against a module tree written from the official `seg_hrnet.py`
(tests/reference/test_official_hrnet.py: max difference 0.0 for W18-Small-v1 / v2 and W48). timm upsamples in the
fuse layers with nearest interpolation: build the backbone with `fuse_upsample="nearest"`.

mmseg (0.x and 1.x, `mmseg/models/backbones/hrnet.py`: the same code since its first release; checked in 0.30.0 and
1.2.2) upsamples in the fuse layers bilinearly with `align_corners=False`, in two steps: `Upsample(scale_factor=
2**(j - i), mode='bilinear', align_corners=False)` after the 1x1 conv + BN, then `resize(..., size=x[i].shape[2:],
mode='bilinear', align_corners=False)`; its FCN head (`input_transform='resize_concat'`) resizes with the config's
`align_corners=False`. The mmseg overrides are `fuse_upsample="bilinear_scale"` (those two steps; at sizes whose
branches halve exactly, e.g. multiples of 32, plain `bilinear` is the same), `align_corners=False` and a head conv
without bias. Measured against mmseg 1.2.2 on a 75x93 input (tests/reference/test_mmseg.py): max logit difference
0.0 for `fcn_hr18s` and `fcn_hr48` (logit ranges 7.6 and 12.6); the nearest fuse this converter used to set gave 3.2
and 3.8, one-step bilinear 0.69 and 1.09.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from seglab.convert.common import (
    ConversionResult,
    RenameRule,
    SourceKeys,
    TargetDict,
    apply_rename_table,
    finalize,
    model_variant,
)

OFFICIAL_OVERRIDES: dict[str, Any] = {"align_corners": False, "fuse_upsample": "bilinear", "head_conv_bias": True}
TIMM_BACKBONE_OPTIONS: dict[str, Any] = {"fuse_upsample": "nearest"}

_PARAM = r"(weight|bias)"
_TENSOR = r"(weight|bias|running_mean|running_var|num_batches_tracked)"  # of a conv or a BN
_PREFIX = r"(?:model\.)?"  # the released segmentation checkpoints wrap the network in a `FullModel` (`model.`)
_CONV_BN = {"0": "conv", "1": "norm"}  # index in an official (conv, BN[, ReLU]) `nn.Sequential` -> ConvNormAct child


def _stage(number: str) -> int:
    """`stage2`..`stage4` (official names) -> index 0..2 of seglab's `stages`."""
    return int(number) - 2


def _block_rules(
    key_prefix: str, source: str, prefix: Callable[[re.Match[str]], str], groups: int
) -> list[RenameRule]:
    """Residual block renames: `{source}.conv{n}` / `bn{n}` -> `{prefix}.conv{n}.conv` / `.norm`, and
    `{source}.downsample.{0,1}` -> `{prefix}.downsample.{conv,norm}`; `source` has `groups` capture groups and
    `key_prefix` (a regex) none."""
    return [
        RenameRule(rf"{key_prefix}{source}\.conv([123])\.weight",
                   lambda m: f"backbone.{prefix(m)}.conv{m[groups + 1]}.conv.weight"),
        RenameRule(rf"{key_prefix}{source}\.bn([123])\.{_TENSOR}",
                   lambda m: f"backbone.{prefix(m)}.conv{m[groups + 1]}.norm.{m[groups + 2]}"),
        RenameRule(rf"{key_prefix}{source}\.downsample\.([01])\.{_TENSOR}",
                   lambda m: f"backbone.{prefix(m)}.downsample.{_CONV_BN[m[groups + 1]]}.{m[groups + 2]}"),
    ]


def _backbone_table(key_prefix: str) -> list[RenameRule]:
    """The backbone renames for source keys starting with `key_prefix` (a regex without capture groups)."""
    return [
        RenameRule(rf"{key_prefix}conv([12])\.weight", r"backbone.stem.conv\1.conv.weight"),
        RenameRule(rf"{key_prefix}bn([12])\.{_TENSOR}", r"backbone.stem.conv\1.norm.\2"),
        *_block_rules(key_prefix, r"layer1\.(\d+)", lambda m: f"layer1.{m[1]}", groups=1),
        # a new branch: `transition{t}.{i}.{k}.{0,1}`; checked before the 3-level form, which it does not match anyway
        RenameRule(rf"{key_prefix}transition([1-3])\.(\d+)\.(\d+)\.([01])\.{_TENSOR}",
                   lambda m: f"backbone.transitions.{int(m[1]) - 1}.{m[2]}.{m[3]}.{_CONV_BN[m[4]]}.{m[5]}"),
        RenameRule(rf"{key_prefix}transition([1-3])\.(\d+)\.([01])\.{_TENSOR}",
                   lambda m: f"backbone.transitions.{int(m[1]) - 1}.{m[2]}.{_CONV_BN[m[3]]}.{m[4]}"),
        *_block_rules(key_prefix, r"stage([2-4])\.(\d+)\.branches\.(\d+)\.(\d+)",
                      lambda m: f"stages.{_stage(m[1])}.{m[2]}.branches.{m[3]}.{m[4]}", groups=4),
        RenameRule(rf"{key_prefix}stage([2-4])\.(\d+)\.fuse_layers\.(\d+)\.(\d+)\.(\d+)\.([01])\.{_TENSOR}",
                   lambda m: f"backbone.stages.{_stage(m[1])}.{m[2]}.fuse_layers.{m[3]}.{m[4]}.{m[5]}."
                             f"{_CONV_BN[m[6]]}.{m[7]}"),
        RenameRule(rf"{key_prefix}stage([2-4])\.(\d+)\.fuse_layers\.(\d+)\.(\d+)\.([01])\.{_TENSOR}",
                   lambda m: f"backbone.stages.{_stage(m[1])}.{m[2]}.fuse_layers.{m[3]}.{m[4]}."
                             f"{_CONV_BN[m[5]]}.{m[6]}"),
    ]


BACKBONE_TABLE = _backbone_table(_PREFIX)
MMSEG_BACKBONE_TABLE = _backbone_table(r"backbone\.")  # mmseg's HRNet keeps the official names under `backbone.`

HEAD_TABLE: list[RenameRule] = [
    RenameRule(rf"{_PREFIX}last_layer\.0\.{_PARAM}", r"decode_head.fuse.conv.\1"),
    RenameRule(rf"{_PREFIX}last_layer\.1\.{_TENSOR}", r"decode_head.fuse.norm.\1"),
    RenameRule(rf"{_PREFIX}last_layer\.3\.{_PARAM}", r"decode_head.classifier.\1"),
]

# mmseg's FCNHead of the fcn_hr* configs (`num_convs=1`, `kernel_size=1`, a ConvModule without bias, no dropout)
MMSEG_HEAD_TABLE: list[RenameRule] = [
    RenameRule(r"decode_head\.convs\.0\.conv\.weight", r"decode_head.fuse.conv.weight"),
    RenameRule(rf"decode_head\.convs\.0\.bn\.{_TENSOR}", r"decode_head.fuse.norm.\1"),
    RenameRule(rf"decode_head\.conv_seg\.{_PARAM}", r"decode_head.classifier.\1"),
]
# mmseg HRNet: bilinear x2^k upsampling then a bilinear resize to the branch size in the fuse layers, align_corners
# False everywhere, no head conv bias
MMSEG_OVERRIDES: dict[str, Any] = {"align_corners": False, "fuse_upsample": "bilinear_scale", "head_conv_bias": False}

OFFICIAL_DROPPED = [r"loss\.criterion\.weight"]  # class weights of the training loss, not part of the network
TIMM_DROPPED = [r"(incre_modules|downsamp_modules|final_layer|classifier)\..*"]  # the ImageNet head


def hrnet_variant(model_name: str) -> str:
    """`fcn_hrnetv2_w48` -> `w48`; any other model name is refused with the list of supported ones."""
    from seglab.models.hrnet import HRNET_VARIANTS

    return model_variant(model_name, "fcn_hrnetv2_", HRNET_VARIANTS, "HRNet", "official")


def convert_hrnet_official(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict", align_corners: bool = False
) -> ConversionResult:
    """Converts an official HRNet-Semantic-Segmentation checkpoint (`HighResolutionNet` + `last_layer`), or an
    official HRNet-Image-Classification ImageNet checkpoint (no `last_layer`: the layout timm's `hrnet_*` holds) to
    backbone-only weights through `convert_hrnet_timm_backbone`.

    Args:
        state_dict: the checkpoint's tensors, with or without the `model.` prefix of the released files;
            `loss.criterion.weight` is dropped.
        model_name: the seglab model the weights are for, `fcn_hrnetv2_w18s_v1` .. `fcn_hrnetv2_w48`.
        origin: the file name, for error messages.
        align_corners: the checkpoint's code version and config (module docstring): True for the HRNet-OCR branch's
            ADE20K and COCO-Stuff models only; False (the default) for its Cityscapes / LIP / PASCAL-Context models and
            for every checkpoint of the master and pytorch-v1.1 code (W48 Cityscapes / LIP / PASCAL-Context,
            W18-Small-v1 / v2).

    Returns:
        seglab keys, `num_classes` read from the classifier, and the official numerics as overrides
        (`OFFICIAL_OVERRIDES`: `align_corners`, bilinear fuse upsampling, a biased head conv).
    """
    hrnet_variant(model_name)
    if not any(re.fullmatch(rf"{_PREFIX}last_layer\..+", key) for key in state_dict):
        return convert_hrnet_timm_backbone(state_dict, model_name, origin)
    source = SourceKeys(state_dict, origin)
    for pattern in OFFICIAL_DROPPED:
        source.drop(pattern)
    target = TargetDict()
    apply_rename_table(source, target, BACKBONE_TABLE + HEAD_TABLE)
    source.check_consumed(f"{model_name} (official HRNet layout)")
    key = "decode_head.classifier.weight"
    if key not in target.tensors:
        raise ValueError(f"{origin}: no classifier `last_layer.3.weight` (or `model.last_layer.3.weight`); is it a "
                         f"segmentation checkpoint of HRNet-Semantic-Segmentation?")
    weight = target.tensors[key]
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(f"{target.origin[key]!r}: expected a 1x1 conv weight (classes, channels, 1, 1), got shape "
                         f"{tuple(weight.shape)} (FINAL_CONV_KERNEL other than 1 is not supported)")
    overrides = {**OFFICIAL_OVERRIDES, "align_corners": align_corners}
    return finalize(source, target, model_name, int(weight.shape[0]), overrides)


def convert_hrnet_mmseg(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts an mmsegmentation FCN-HRNet checkpoint (`fcn_hr18s/hr18/hr48_*`, 0.x and 1.x: the same names).

    Args:
        state_dict: `backbone.*` (the official HRNet names) and `decode_head.{convs.0,conv_seg}.*`; a checkpoint with
            more head convs or an auxiliary head is refused, naming the keys.
        model_name: the seglab model the weights are for (`fcn_hr18s` -> `fcn_hrnetv2_w18s`, `fcn_hr18` ->
            `fcn_hrnetv2_w18`, `fcn_hr48` -> `fcn_hrnetv2_w48`).
        origin: the file name, for error messages.

    Returns:
        seglab keys, `num_classes` read from `conv_seg`, and mmseg's numerics as overrides (`MMSEG_OVERRIDES`: the
        two-step bilinear fuse upsampling, `align_corners=False`, no head conv bias; see the module docstring).
    """
    hrnet_variant(model_name)
    source = SourceKeys(state_dict, origin)
    target = TargetDict()
    apply_rename_table(source, target, MMSEG_BACKBONE_TABLE + MMSEG_HEAD_TABLE)
    source.check_consumed(f"{model_name} (mmseg FCN-HRNet layout)")
    key = "decode_head.classifier.weight"
    if key not in target.tensors:
        raise ValueError(f"{origin}: no classifier `decode_head.conv_seg.weight`; is it an mmseg FCN-HRNet checkpoint?")
    return finalize(source, target, model_name, int(target.tensors[key].shape[0]), dict(MMSEG_OVERRIDES))


def convert_hrnet_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Converts a timm `hrnet_*` state dict (classification model or `features_only`) to an `HRNet` backbone
    state dict (no `backbone.` prefix). Build the backbone with `TIMM_BACKBONE_OPTIONS` (nearest fuse upsampling)
    to reproduce timm's outputs.

    Args:
        state_dict: the timm model's tensors; its ImageNet head, if any, is dropped.

    Raises:
        ValueError: naming every key the converter does not understand.
    """
    source = SourceKeys(state_dict, "timm state dict")
    for pattern in TIMM_DROPPED:
        source.drop(pattern)
    target = TargetDict()
    apply_rename_table(source, target, BACKBONE_TABLE)
    source.check_consumed("the HRNet backbone (timm layout)")
    return {k.removeprefix("backbone."): v for k, v in target.tensors.items()}


def convert_hrnet_timm_backbone(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """A timm `hrnet_*` state dict as backbone-only weights of `model_name` (for a recipe's `model.pretrained`).

    Args:
        state_dict: the timm model's tensors (an ImageNet classifier or a `features_only` model).
        model_name: the seglab model the weights are for, `fcn_hrnetv2_w18s_v1` .. `fcn_hrnetv2_w48`
            (timm `hrnet_w18_small` -> `w18s_v1`, `hrnet_w18_small_v2` -> `w18s`, `hrnet_w18/w32/w48`).
        origin: the file name, for error messages.

    Returns:
        `backbone.*` keys (`backbone_only`), checked against the model's backbone; `overrides` holds timm's nearest
        fuse upsampling, which reproduces the ImageNet network (fine-tuning with the default bilinear fuse works too).
    """
    hrnet_variant(model_name)
    source = SourceKeys(state_dict, origin)
    for pattern in TIMM_DROPPED:
        source.drop(pattern)
    target = TargetDict()
    apply_rename_table(source, target, BACKBONE_TABLE)
    source.check_consumed(f"{model_name} (timm HRNet layout, backbone only)")
    return finalize(source, target, model_name, None, dict(TIMM_BACKBONE_OPTIONS), backbone_only=True)
