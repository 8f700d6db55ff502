"""SETR checkpoints -> seglab: mmsegmentation (`setr_vit-l_{naive,pup,mla}_*`) and the original fudan-zvg/SETR code.

Backbones go through `seglab.convert.vit` (mmseg `VisionTransformer` keys; the original encoder uses timm's names).
Heads are renamed here:

- mmseg Naive / PUP (`SETRUPHead`): `decode_head.norm`, `decode_head.up_convs.{i}.0.{conv,bn}` (the `.1` Upsample has
  no parameters), `decode_head.conv_seg`; auxiliary heads the same under `auxiliary_head.{j}`.
- mmseg MLA: `neck.norm.{i}`, `neck.mla.channel_proj.{i}.{conv,bn}`, `neck.mla.feat_extract.{i}.{conv,bn}`,
  `decode_head.up_convs.{i}.{0,1}.{conv,bn}`, `decode_head.conv_seg`, `auxiliary_head.{j}.conv_seg` (FCN heads
  without convs). NOTE: mmseg's `feat_extract[i]` acts on the sum that starts at input `n-1-i`, its neck returns the
  levels deepest first and its head concatenates them in that order; seglab keeps shallow to deep, so
  `feat_extract.{i}`, `up_convs.{i}` and `auxiliary_head.{i}` become index `n-1-i` and the classifier's input-channel
  blocks are reversed.
- Original Naive / PUP (`VisionTransformerUpHead`): `decode_head.norm`, `conv_{k}` + `syncbn_fc_{k}` (conv with bias,
  then BN) and the last `conv_{k}` (classifier); the conv bias before a BN is folded into its `running_mean`
  (`BN(Wx + b) = BN'(Wx)` with `mean' = mean - b`, exact). The unused `conv_seg` that `BaseDecodeHead` builds is
  dropped. Numerics set as overrides, from the original configs: Naive heads classify at stride 16 (`up_scale=1`),
  auxiliary heads have one conv (`aux_num_convs=1`), upsampled x4 before their classifier in PUP only; the original
  PUP has a fourth auxiliary head on the last layer (`aux_in_index=(0, 1, 2, 3)`).
- Original MLA: the neck lives in the backbone (`backbone.norm_{0..3}`, `backbone.mla.mla_p{K}_1x1` and
  `backbone.mla.mla_p{K}` as `(conv, BN, ReLU)` sequences, K = 2..5 shallow to deep), the head is
  `decode_head.mlahead.head{K}` (`conv, BN, ReLU, conv, BN, ReLU`) and `decode_head.cls` (3x3), the auxiliary heads
  `auxiliary_head.{j}.aux` (1x1, no bias: seglab's auxiliary classifier gets a zero bias, which changes nothing).
  Overrides: `classifier_kernel=3`, `up_align_corners=True`.

Every converter reads `num_classes` from the classifier and `img_size` from the position embedding (square grids), and
picks the ViT variant from the width and depth; an mmseg 1.x checkpoint (its ViT is built with `patch_bias=False`, no
`backbone.patch_embed.projection.bias`) gets `patch_bias=False`. A source without `decode_head.*` keys is an ImageNet
encoder (mmseg ViT for `mmseg`, timm / `jx_vit_*` for `official`, a JAX / AugReg `.npz` for either): it converts to
backbone keys only (`seglab.convert.vit.imagenet_vit_backbone`), its final norm and classifier dropped and its position
embedding resampled bilinearly to the model's grid, as both codes do when they load it. `img_size` picks that grid (768
for the Cityscapes recipes, 480 for Pascal Context) and is returned as an override.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from seglab.convert.common import (
    ConversionResult,
    RenameRule,
    SourceKeys,
    TargetDict,
    apply_rename_table,
    finalize,
    has_decode_head,
    model_variant,
    permute_concat_blocks,
)
from seglab.convert.vit import convert_vit_mmseg, convert_vit_timm, imagenet_vit_backbone, patch_bias_overrides

_PARAM = r"(weight|bias)"
_BN_LEAF = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_HEAD = r"(decode_head|auxiliary_head\.\d+)"
_VIT_KEY = r"backbone\.(patch_embed|cls_token|pos_embed|blocks|layers|ln1|norm\.)"  # backbone keys of a plain ViT

OFFICIAL_UP_OVERRIDES: dict[str, dict[str, Any]] = {
    "naive": {"up_scale": 1, "aux_num_convs": 1, "aux_up_scale": 1},
    "pup": {"aux_num_convs": 1, "aux_up_scale": 4},
}
OFFICIAL_MLA_OVERRIDES: dict[str, Any] = {"classifier_kernel": 3, "up_align_corners": True}


def _up_head_target(match: re.Match[str]) -> str:
    """`decode_head` -> `decode_head`, `auxiliary_head.{j}` -> `aux_heads.{j}`."""
    return match[1].replace("auxiliary_head", "aux_heads")


MMSEG_UP_TABLE: list[RenameRule] = [
    RenameRule(rf"{_HEAD}\.norm\.{_PARAM}", lambda m: f"{_up_head_target(m)}.norm.{m[2]}"),
    RenameRule(rf"{_HEAD}\.up_convs\.(\d+)\.0\.conv\.weight",
               lambda m: f"{_up_head_target(m)}.convs.{m[2]}.conv.weight"),
    RenameRule(rf"{_HEAD}\.up_convs\.(\d+)\.0\.bn\.{_BN_LEAF}",
               lambda m: f"{_up_head_target(m)}.convs.{m[2]}.norm.{m[3]}"),
    RenameRule(rf"{_HEAD}\.conv_seg\.{_PARAM}", lambda m: f"{_up_head_target(m)}.classifier.{m[2]}"),
]


def _mmseg_mla_table(levels: int) -> list[RenameRule]:
    """mmseg MLA renames for `levels` neck levels (the deepest-first indices reversed, see the module docstring)."""

    def rev(index: str) -> int:
        return levels - 1 - int(index)

    return [
        RenameRule(rf"neck\.norm\.(\d+)\.{_PARAM}", r"neck.norms.\1.\2"),
        RenameRule(r"neck\.mla\.channel_proj\.(\d+)\.conv\.weight", r"neck.lateral_convs.\1.conv.weight"),
        RenameRule(rf"neck\.mla\.channel_proj\.(\d+)\.bn\.{_BN_LEAF}", r"neck.lateral_convs.\1.norm.\2"),
        RenameRule(r"neck\.mla\.feat_extract\.(\d+)\.conv\.weight",
                   lambda m: f"neck.out_convs.{rev(m[1])}.conv.weight"),
        RenameRule(rf"neck\.mla\.feat_extract\.(\d+)\.bn\.{_BN_LEAF}",
                   lambda m: f"neck.out_convs.{rev(m[1])}.norm.{m[2]}"),
        RenameRule(r"decode_head\.up_convs\.(\d+)\.([01])\.conv\.weight",
                   lambda m: f"decode_head.convs.{rev(m[1])}.{m[2]}.conv.weight"),
        RenameRule(rf"decode_head\.up_convs\.(\d+)\.([01])\.bn\.{_BN_LEAF}",
                   lambda m: f"decode_head.convs.{rev(m[1])}.{m[2]}.norm.{m[3]}"),
        RenameRule(r"decode_head\.conv_seg\.weight", "decode_head.classifier.weight",
                   lambda w: permute_concat_blocks(w, list(range(levels - 1, -1, -1)))),
        RenameRule(r"decode_head\.conv_seg\.bias", "decode_head.classifier.bias"),
        RenameRule(rf"auxiliary_head\.(\d+)\.conv_seg\.{_PARAM}", lambda m: f"aux_heads.{rev(m[1])}.classifier.{m[2]}"),
    ]


def _official_up_table() -> list[RenameRule]:
    """Original `VisionTransformerUpHead` renames; conv biases are folded beforehand (`_fold_conv_bias`), and the
    classifier (the `conv_{k}` without a BN) is renamed by `_official_up_classifiers`."""
    return [
        RenameRule(rf"{_HEAD}\.norm\.{_PARAM}", lambda m: f"{_up_head_target(m)}.norm.{m[2]}"),
        RenameRule(rf"{_HEAD}\.syncbn_fc_(\d+)\.{_BN_LEAF}",
                   lambda m: f"{_up_head_target(m)}.convs.{m[2]}.norm.{m[3]}"),
    ]


def _level(number: str) -> int:
    """`mla_p2` .. `mla_p5` / `head2` .. `head5` (original names) -> level 0..3, shallow to deep."""
    return int(number) - 2


_OFFICIAL_SEQ = {"0": "0.conv", "1": "0.norm", "3": "1.conv", "4": "1.norm"}  # index in `head{K}` -> seglab child

OFFICIAL_MLA_TABLE: list[RenameRule] = [
    RenameRule(rf"backbone\.norm_(\d)\.{_PARAM}", r"neck.norms.\1.\2"),
    RenameRule(r"backbone\.mla\.mla_p([2-5])_1x1\.0\.weight",
               lambda m: f"neck.lateral_convs.{_level(m[1])}.conv.weight"),
    RenameRule(rf"backbone\.mla\.mla_p([2-5])_1x1\.1\.{_BN_LEAF}",
               lambda m: f"neck.lateral_convs.{_level(m[1])}.norm.{m[2]}"),
    RenameRule(r"backbone\.mla\.mla_p([2-5])\.0\.weight", lambda m: f"neck.out_convs.{_level(m[1])}.conv.weight"),
    RenameRule(rf"backbone\.mla\.mla_p([2-5])\.1\.{_BN_LEAF}", lambda m: f"neck.out_convs.{_level(m[1])}.norm.{m[2]}"),
    RenameRule(r"decode_head\.mlahead\.head([2-5])\.([03])\.weight",
               lambda m: f"decode_head.convs.{_level(m[1])}.{_OFFICIAL_SEQ[m[2]]}.weight"),
    RenameRule(rf"decode_head\.mlahead\.head([2-5])\.([14])\.{_BN_LEAF}",
               lambda m: f"decode_head.convs.{_level(m[1])}.{_OFFICIAL_SEQ[m[2]]}.{m[3]}"),
    RenameRule(rf"decode_head\.cls\.{_PARAM}", r"decode_head.classifier.\1"),
    RenameRule(r"auxiliary_head\.(\d+)\.aux\.weight", r"aux_heads.\1.classifier.weight"),
]
# `BaseDecodeHead` builds `conv_seg` from `channels` even where the original head never calls it
OFFICIAL_DROPPED = rf"{_HEAD}\.conv_seg\.{_PARAM}"


def setr_variant(model_name: str, source: str) -> str:
    """`setr_pup_vit_l` -> `pup`; other names are refused with the supported list."""
    from seglab.models.setr import SETR_VARIANTS

    variant = model_variant(model_name, "setr_", [f"{v}_vit_l" for v in SETR_VARIANTS], "SETR", source)
    return variant.removesuffix("_vit_l")


def convert_setr_mmseg(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict",
    overrides: Mapping[str, Any] | None = None, img_size: int | None = None,
) -> ConversionResult:
    """Converts an mmsegmentation SETR checkpoint (`SETRUPHead` / `MLANeck` + `SETRMLAHead`, mmseg 0.x and 1.x).

    Args:
        state_dict: `backbone.*` (mmseg `VisionTransformer`), `neck.*` (MLA), `decode_head.*`, `auxiliary_head.{j}.*`;
            or an mmseg ImageNet ViT alone (no `decode_head.*`): backbone-only weights.
        model_name: `setr_naive_vit_l`, `setr_pup_vit_l` or `setr_mla_vit_l`, the head type of the checkpoint.
        origin: the file name, for error messages.
        overrides: model options the keys cannot tell, for checkpoints of other recipes (e.g. `layers` of a ViT-B
            SETR); they win over the inferred ones.
        img_size: for a backbone-only source, the crop to resample the position embedding for (768 for Cityscapes,
            480 for Pascal Context; default the model's), returned as the `img_size` override; a whole-model
            checkpoint keeps its own grid and refuses another.

    Returns:
        seglab keys; `num_classes` from the classifier; overrides: `img_size` from the position embedding, `vit` from
        the width and depth, the number of auxiliary heads, `patch_bias=False` for a checkpoint trained with mmseg 1.x
        (its ViT has no patch-embedding bias), plus `overrides`. mmseg's other numerics are the models' defaults.
    """
    variant = setr_variant(model_name, "mmseg")
    overrides = _with_img_size(overrides, img_size)
    source = SourceKeys(state_dict, origin)
    target = TargetDict()
    if not has_decode_head(state_dict):
        return imagenet_vit_backbone(source, convert_vit_mmseg, model_name, overrides or {}, final_norm=False)
    _put_backbone(source, target, convert_vit_mmseg)
    if variant == "mla":
        levels = len({m[1] for k in source.keys() if (m := re.fullmatch(r"neck\.norm\.(\d+)\.weight", k))})
        apply_rename_table(source, target, _mmseg_mla_table(levels))
    else:
        apply_rename_table(source, target, MMSEG_UP_TABLE)
    source.check_consumed(f"{model_name} (mmseg SETR layout)")
    return _finish(source, target, model_name, {}, overrides)


def convert_setr_official(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict",
    overrides: Mapping[str, Any] | None = None, img_size: int | None = None,
) -> ConversionResult:
    """Converts an original fudan-zvg/SETR checkpoint (`VisionTransformer` / `VIT_MLA` + `VisionTransformerUpHead` /
    `VIT_MLAHead`, auxiliary `VisionTransformerUpHead` / `VIT_MLA_AUXIHead`).

    Args:
        state_dict: the checkpoint's tensors; or a timm / `jx_vit_*` ImageNet ViT alone (no `decode_head.*`):
            backbone-only weights.
        model_name: `setr_naive_vit_l`, `setr_pup_vit_l` or `setr_mla_vit_l`, the head type of the checkpoint.
        origin: the file name, for error messages.
        overrides: model options the keys cannot tell; they win over the inferred ones.
        img_size: as for `convert_setr_mmseg`.

    Returns:
        seglab keys; `num_classes` from the classifier; overrides: the original numerics (`OFFICIAL_UP_OVERRIDES`,
        `OFFICIAL_MLA_OVERRIDES`), `img_size`, `vit`, the auxiliary heads, plus `overrides`. The original PUP head
        classifies before its last x2 upsampling and seglab after it: equal up to rounding (see `seglab.heads.setr`).
    """
    variant = setr_variant(model_name, "official")
    overrides = _with_img_size(overrides, img_size)
    source = SourceKeys(state_dict, origin)
    target = TargetDict()
    if not has_decode_head(state_dict):
        return imagenet_vit_backbone(source, convert_vit_timm, model_name, overrides or {}, final_norm=False)
    source.drop(OFFICIAL_DROPPED)
    _put_backbone(source, target, convert_vit_timm)
    if variant == "mla":
        apply_rename_table(source, target, OFFICIAL_MLA_TABLE)
        for key in list(target.tensors):
            if m := re.fullmatch(r"aux_heads\.(\d+)\.classifier\.weight", key):
                bias = torch.zeros(target.tensors[key].shape[0], dtype=target.tensors[key].dtype)
                target.put(f"aux_heads.{m[1]}.classifier.bias", bias, "(none: the original `aux` conv has no bias)")
        inferred = dict(OFFICIAL_MLA_OVERRIDES)
    else:
        _fold_conv_bias(source, target)
        _official_up_classifiers(source, target)
        apply_rename_table(source, target, _official_up_table())
        inferred = dict(OFFICIAL_UP_OVERRIDES[variant])
    source.check_consumed(f"{model_name} (original SETR layout)")
    return _finish(source, target, model_name, inferred, overrides)


def _with_img_size(overrides: Mapping[str, Any] | None, img_size: int | None) -> dict[str, Any]:
    return {**(overrides or {}), **({} if img_size is None else {"img_size": img_size})}


def _put_backbone(source: SourceKeys, target: TargetDict, convert_vit) -> None:
    """Moves the plain-ViT `backbone.*` keys through the ViT converter (final norm dropped: SETR has none)."""
    keys = [k for k in source.keys() if re.match(_VIT_KEY, k)]
    vit = {k.removeprefix("backbone."): source.take(k) for k in keys}
    dropped: list[str] = []
    for key, value in convert_vit(vit, final_norm=False, dropped=dropped).items():
        target.put(f"backbone.{key}", value, f"backbone ({source.origin}, via seglab.convert.vit)")
    source.dropped.extend(f"backbone.{k}" for k in dropped)


def _fold_conv_bias(source: SourceKeys, target: TargetDict) -> None:
    """Original up heads: each `conv_{k}.bias` followed by `syncbn_fc_{k}` is folded into that BN's running mean."""
    for key in source.keys():
        m = re.fullmatch(rf"{_HEAD}\.conv_(\d+)\.bias", key)
        mean_key = f"{m[1]}.syncbn_fc_{m[2]}.running_mean" if m else ""
        if m is None or mean_key not in source.tensors:
            continue
        bias, mean = source.take(key), source.take(mean_key)
        if bias.shape != mean.shape:
            raise ValueError(f"{source.origin}: {key!r} {tuple(bias.shape)} does not match {mean_key!r} "
                             f"{tuple(mean.shape)}")
        head = _up_head_target(m)
        target.put(f"{head}.convs.{m[2]}.norm.running_mean", mean - bias, f"{mean_key} - {key}")
        target.put(f"{head}.convs.{m[2]}.conv.weight", source.take(f"{m[1]}.conv_{m[2]}.weight"),
                   f"{m[1]}.conv_{m[2]}.weight")


def _official_up_classifiers(source: SourceKeys, target: TargetDict) -> None:
    """Original up heads: the `conv_{k}` with the highest k and no BN after it is the classifier."""
    heads = {m[1] for k in source.keys() if (m := re.fullmatch(rf"{_HEAD}\.conv_\d+\.weight", k))}
    for head in sorted(heads):
        pattern = rf"{re.escape(head)}\.conv_(\d+)\.weight"
        last = max(int(m[1]) for k in source.keys() if (m := re.fullmatch(pattern, k)))
        if f"{head}.syncbn_fc_{last}.weight" in source.tensors:
            raise ValueError(f"{source.origin}: {head}.conv_{last} is followed by a BN; expected the last conv of "
                             f"{head} to be its classifier")
        for param in ("weight", "bias"):
            target.put(f"{_up_head_target(re.match(_HEAD, head))}.classifier.{param}",
                       source.take(f"{head}.conv_{last}.{param}"), f"{head}.conv_{last}.{param}")


def _vit_variant(target: TargetDict) -> str:
    """The `VIT_CONFIGS` key with the checkpoint's width and depth."""
    from seglab.backbones.vit import VIT_CONFIGS

    width = target.tensors["backbone.cls_token"].shape[-1]
    depth = len({m[1] for k in target.tensors if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))})
    for name, config in VIT_CONFIGS.items():
        if (config.embed_dim, config.depth) == (width, depth):
            return name
    raise ValueError(f"a ViT of width {width} and depth {depth} is none of seglab's ViT variants "
                     f"({', '.join(f'{n}: {c.embed_dim}x{c.depth}' for n, c in VIT_CONFIGS.items())})")


def _grid_img_size(target: TargetDict) -> int:
    """The square image size of the position embedding: sqrt(tokens - 1) patches per side."""
    pos, weight = target.tensors["backbone.pos_embed"], target.tensors["backbone.patch_embed.proj.weight"]
    side = math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1:
        raise ValueError(f"{target.origin['backbone.pos_embed']!r}: {pos.shape[1] - 1} patch positions are not a "
                         f"square grid; pass `overrides` with the model's img_size")
    return side * weight.shape[-1]


def _finish(
    source: SourceKeys, target: TargetDict, model_name: str, inferred: dict[str, Any],
    overrides: Mapping[str, Any] | None,
) -> ConversionResult:
    """Infers `num_classes`, `img_size`, `vit` and the auxiliary heads, then checks against the model."""
    from seglab.registry import resolve_options

    key = "decode_head.classifier.weight"
    if key not in target.tensors:
        raise ValueError(f"{source.origin}: no decode-head classifier (`decode_head.conv_seg`, `.cls` or the last "
                         f"`.conv_k`); is it a SETR checkpoint of this head type ({model_name})?")
    num_classes = int(target.tensors[key].shape[0])
    inferred = {**inferred, "img_size": _grid_img_size(target), "vit": _vit_variant(target),
                **patch_bias_overrides(target.tensors, "backbone.")}
    requested = (overrides or {}).get("img_size")
    if requested is not None and requested != inferred["img_size"]:
        raise ValueError(f"{source.origin}: its position embedding is trained for img_size {inferred['img_size']}; "
                         f"a whole-model checkpoint keeps its grid (img_size {requested} is for backbone-only sources)")
    aux = sorted({int(m[1]) for k in target.tensors if (m := re.match(r"aux_heads\.(\d+)\.", k))})
    if not aux:
        inferred["aux_heads"] = False
    elif "aux_in_index" in {f.name for f in dataclasses.fields(resolve_options(model_name, {}))}:
        inferred["aux_in_index"] = tuple(range(len(aux)))
    options = {**inferred, **(overrides or {})}
    resolve_options(model_name, options)  # unknown option names fail here, listing the valid ones
    defaults = resolve_options(model_name, {})
    kept = {k: v for k, v in options.items() if getattr(defaults, k) != v or k == "img_size"}
    return finalize(source, target, model_name, num_classes, kept)

