"""Segmenter checkpoints (official rstrudel/segmenter, mmsegmentation) -> seglab.

Official layout (`segm/model/segmenter.py`, `vit.py`, `decoder.py`; the released `checkpoint.pth` holds the model under
`model`): the encoder under `encoder.` with timm's ViT names (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`) plus its unused ImageNet classifier
`encoder.head` (dropped); the mask transformer `decoder.cls_emb` (1, K, C), `decoder.proj_dec` (Linear),
`decoder.blocks.{i}.*` (the same block names), `decoder.decoder_norm`, `decoder.proj_patch` / `decoder.proj_classes`
((C, C) matrices applied as `x @ P`: transposed into our bias-free Linear weights), `decoder.mask_norm`; or the
linear decoder `decoder.head` (Linear C -> K, reshaped to our 1x1 conv). Numerics: every LayerNorm of the official
code is PyTorch's default (eps 1e-5) and the position embedding is resampled bilinearly, so the result carries
`norm_eps=1e-5, interpolate_mode="bilinear"` as overrides. DeiT-distilled encoders (`encoder.dist_token`) are refused.

mmseg layout (`SegmenterMaskTransformerHead`, 0.x and 1.x): the backbone `backbone.*` with mmseg's ViT names (mapped by
`seglab.convert.vit.convert_vit_mmseg`); `decode_head.dec_proj`, `decode_head.cls_emb`, `decode_head.layers.{i}.
{ln1, attn.attn.in_proj_weight/bias, attn.attn.out_proj, ln2, ffn.layers.0.0, ffn.layers.1}`, `decode_head.
decoder_norm`, `decode_head.patch_proj`, `decode_head.classes_proj`, `decode_head.mask_norm`, and the `conv_seg` that
mmseg's `BaseDecodeHead` always builds but the mask transformer never uses (dropped); the linear models are an
`FCNHead` with `num_convs=0`: `decode_head.conv_seg` only. mmseg's numerics are seglab's defaults, except that mmseg
1.x's ViT has no patch-embedding bias (`patch_bias=False` by default there; 0.x had one): without
`backbone.patch_embed.projection.bias` the result carries `patch_bias=False`.

A source without a decoder (a timm / official-encoder ViT for `official`, an mmseg ViT such as the `vit_*_p16_384.pth`
that mmseg's recipes pretrain from for `mmseg`, a JAX / AugReg `.npz` for either) converts to backbone-only weights
for a recipe's `model.pretrained` (`seglab.convert.vit.imagenet_vit_backbone`); its position embedding is resampled to
the model's grid as the source code does when it loads pretrained weights (bilinear in the official code, bicubic in
mmseg). `img_size` picks that grid (768 for Cityscapes, 480 for Pascal Context) and is returned as an override.

The position-embedding grid of a whole-model checkpoint sets `img_size` when it is not the variant's default.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from seglab.convert.common import (
    ConversionResult,
    RenameRule,
    SourceKeys,
    TargetDict,
    apply_rename_table,
    finalize,
    linear_to_conv1x1,
)
from seglab.convert.vit import convert_vit_mmseg, convert_vit_timm, imagenet_vit_backbone, patch_bias_overrides

_PARAM = r"(weight|bias)"
_BLOCK_PARTS = r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
OFFICIAL_OVERRIDES: dict[str, Any] = {"norm_eps": 1e-5, "interpolate_mode": "bilinear"}


def _transpose(weight: torch.Tensor) -> torch.Tensor:
    """An official (C, C) projection applied as `x @ P` -> the Linear weight P^T."""
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"expected a square (C, C) projection matrix, got shape {tuple(weight.shape)}")
    return weight.T


OFFICIAL_MASK_TABLE: list[RenameRule] = [
    RenameRule(r"decoder\.cls_emb", "decode_head.cls_emb"),
    RenameRule(rf"decoder\.proj_dec\.{_PARAM}", r"decode_head.dec_proj.\1"),
    RenameRule(rf"decoder\.blocks\.(\d+)\.{_BLOCK_PARTS}\.{_PARAM}", r"decode_head.layers.\1.\2.\3"),
    RenameRule(rf"decoder\.(decoder_norm|mask_norm)\.{_PARAM}", r"decode_head.\1.\2"),
    RenameRule(r"decoder\.proj_patch", "decode_head.patch_proj.weight", _transpose),
    RenameRule(r"decoder\.proj_classes", "decode_head.classes_proj.weight", _transpose),
]
OFFICIAL_LINEAR_TABLE: list[RenameRule] = [
    RenameRule(r"decoder\.head\.weight", "decode_head.classifier.weight", linear_to_conv1x1),
    RenameRule(r"decoder\.head\.bias", "decode_head.classifier.bias"),
]

MMSEG_MASK_TABLE: list[RenameRule] = [
    RenameRule(r"decode_head\.cls_emb", "decode_head.cls_emb"),
    RenameRule(rf"decode_head\.(dec_proj|decoder_norm|mask_norm)\.{_PARAM}", r"decode_head.\1.\2"),
    RenameRule(r"decode_head\.(patch_proj|classes_proj)\.weight", r"decode_head.\1.weight"),
    RenameRule(rf"decode_head\.layers\.(\d+)\.ln([12])\.{_PARAM}", r"decode_head.layers.\1.norm\2.\3"),
    RenameRule(r"decode_head\.layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", r"decode_head.layers.\1.attn.qkv.\2"),
    RenameRule(rf"decode_head\.layers\.(\d+)\.attn\.attn\.out_proj\.{_PARAM}", r"decode_head.layers.\1.attn.proj.\2"),
    RenameRule(rf"decode_head\.layers\.(\d+)\.ffn\.layers\.0\.0\.{_PARAM}", r"decode_head.layers.\1.mlp.fc1.\2"),
    RenameRule(rf"decode_head\.layers\.(\d+)\.ffn\.layers\.1\.{_PARAM}", r"decode_head.layers.\1.mlp.fc2.\2"),
]
MMSEG_MASK_DROPPED = rf"decode_head\.conv_seg\.{_PARAM}"  # built by mmseg's BaseDecodeHead, unused by this head
MMSEG_LINEAR_TABLE: list[RenameRule] = [RenameRule(rf"decode_head\.conv_seg\.{_PARAM}", r"decode_head.classifier.\1")]


def segmenter_variant(model_name: str, source: str) -> tuple[str, bool]:
    """`segmenter_vit_b` -> ("b", False), `segmenter_vit_s_linear` -> ("s", True); other names are refused."""
    from seglab.models.segmenter import SEGMENTER_VARIANTS

    names = [f"segmenter_vit_{v}" for v in SEGMENTER_VARIANTS] + [
        f"segmenter_vit_{v}_linear" for v, spec in SEGMENTER_VARIANTS.items() if spec.linear]
    if model_name not in names:
        raise ValueError(f"source {source!r} converts Segmenter checkpoints only here; model must be one of "
                         f"{', '.join(names)}, got {model_name!r}")
    linear = model_name.endswith("_linear")
    return model_name.removeprefix("segmenter_vit_").removesuffix("_linear"), linear


def _grid(pos_embed: torch.Tensor, origin: str) -> int:
    """The side of the square token grid of a (1, 1 + g*g, C) position embedding."""
    tokens = pos_embed.shape[1] - 1
    side = math.isqrt(tokens)
    if pos_embed.ndim != 3 or side * side != tokens:
        raise ValueError(f"{origin}: position embedding of shape {tuple(pos_embed.shape)} is not (1, 1 + g*g, C) "
                         f"for a square grid; non-square trained grids are not supported")
    return side


def _put_backbone(target: TargetDict, backbone: dict[str, torch.Tensor], source_name: str) -> None:
    for key, value in backbone.items():
        target.put(f"backbone.{key}", value, source_name)


def _check_decoder(model_name: str, linear: bool, has_mask: bool, has_linear: bool, origin: str, layout: str) -> None:
    """Refuses a mask-transformer checkpoint for a linear model and the reverse, naming the right model."""
    if has_mask and linear:
        raise ValueError(f"{origin}: a {layout} mask-transformer checkpoint; convert it for "
                         f"{model_name.removesuffix('_linear')!r}, not {model_name!r}")
    if has_linear and not has_mask and not linear:
        raise ValueError(f"{origin}: a {layout} linear-decoder checkpoint; convert it for {model_name}_linear "
                         f"(registered for ViT-S only), not {model_name!r}")


def _img_size_option(img_size: int | None) -> dict[str, Any]:
    return {} if img_size is None else {"img_size": img_size}


def _finish(
    source: SourceKeys, target: TargetDict, model_name: str, variant: str, linear: bool, overrides: dict[str, Any],
    img_size: int | None,
) -> ConversionResult:
    """Reads `num_classes` (class embeddings or classifier) and the position-embedding grid, then checks."""
    from seglab.models.segmenter import SEGMENTER_VARIANTS

    key = "decode_head.classifier.weight" if linear else "decode_head.cls_emb"
    if key not in target.tensors:
        raise ValueError(f"{source.origin}: no decoder {'classifier' if linear else 'class embedding'} "
                         f"({key!r} after renaming); is the checkpoint truncated?")
    num_classes = int(target.tensors[key].shape[0 if linear else 1])
    grid = _grid(target.tensors["backbone.pos_embed"], source.origin)
    if img_size is not None and img_size != grid * 16:
        raise ValueError(f"{source.origin}: its position embedding is trained for img_size {grid * 16}; a whole-model "
                         f"checkpoint keeps its grid (img_size {img_size} is for backbone-only sources)")
    overrides = {**overrides, **patch_bias_overrides(target.tensors, "backbone.")}
    if grid * 16 != SEGMENTER_VARIANTS[variant].crop:
        overrides["img_size"] = grid * 16
    return finalize(source, target, model_name, num_classes, overrides)


def convert_segmenter_official(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict", img_size: int | None = None,
) -> ConversionResult:
    """Converts an official rstrudel/segmenter checkpoint, or a timm ViT as backbone-only weights.

    Args:
        state_dict: the `Segmenter` model's tensors (`encoder.*`, `decoder.*`), or a timm `vit_*_patch16_*` state dict
            (no `encoder.` / `decoder.` keys) for a recipe's `model.pretrained`.
        model_name: `segmenter_vit_t` .. `segmenter_vit_l` (mask transformer) or `segmenter_vit_s_linear`.
        origin: the file name, for error messages.
        img_size: for a timm encoder (backbone-only), the crop to resample the position embedding for (default the
            variant's), returned as the `img_size` override; a whole model keeps its grid and refuses another.

    Returns:
        seglab keys, `num_classes` read from the class embeddings (or the linear classifier), and the official numerics
        as overrides (`OFFICIAL_OVERRIDES`; `img_size` too when the position-embedding grid is not the variant's).
    """
    variant, linear = segmenter_variant(model_name, "official")
    source = SourceKeys(state_dict, origin)
    if not any(k.startswith(("encoder.", "decoder.")) for k in state_dict):
        options = {"interpolate_mode": "bilinear", **_img_size_option(img_size)}
        return imagenet_vit_backbone(source, convert_vit_timm, model_name, options, final_norm=True)
    if "encoder.dist_token" in state_dict:
        raise ValueError(f"{origin}: a Segmenter with a DeiT-distilled encoder (`encoder.dist_token`); its decoder was "
                         f"trained with the distillation token in the encoder, which seglab's ViT does not have")
    _check_decoder(model_name, linear, "decoder.cls_emb" in state_dict, "decoder.head.weight" in state_dict, origin,
                   "official")
    encoder_keys = [k for k in source.keys() if k.startswith("encoder.")]
    dropped = []
    backbone = convert_vit_timm({k.removeprefix("encoder."): source.tensors[k] for k in encoder_keys},
                                final_norm=True, dropped=dropped)
    source.consumed.update(encoder_keys)
    source.dropped.extend(f"encoder.{k}" for k in dropped)
    target = TargetDict()
    _put_backbone(target, backbone, "encoder.*")
    apply_rename_table(source, target, OFFICIAL_LINEAR_TABLE if linear else OFFICIAL_MASK_TABLE)
    source.check_consumed(f"{model_name} (official Segmenter layout)")
    return _finish(source, target, model_name, variant, linear, OFFICIAL_OVERRIDES, img_size)


def convert_segmenter_mmseg(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict", img_size: int | None = None,
) -> ConversionResult:
    """Converts an mmsegmentation Segmenter checkpoint (`segmenter_vit-*_mask_*`, `segmenter_vit-s_linear_*`), or an
    mmseg ViT (`backbone.*` or unprefixed, no `decode_head.*`) as backbone-only weights.

    Args:
        state_dict: the segmentor's `state_dict`.
        model_name: `segmenter_vit_t` .. `segmenter_vit_l` (mask transformer) or `segmenter_vit_s_linear`.
        origin: the file name, for error messages.
        img_size: as for `convert_segmenter_official`.

    Returns:
        seglab keys and `num_classes` read from the class embeddings (or `conv_seg`); mmseg's numerics are seglab's
        defaults, so the only possible overrides are `img_size` (a position-embedding grid other than the variant's)
        and `patch_bias=False` (a checkpoint trained with mmseg 1.x, whose ViT has no patch-embedding bias).
    """
    variant, linear = segmenter_variant(model_name, "mmseg")
    source = SourceKeys(state_dict, origin)
    if not any(k.startswith("decode_head.") for k in state_dict):
        return imagenet_vit_backbone(source, convert_vit_mmseg, model_name, _img_size_option(img_size),
                                     final_norm=True)
    has_mask = "decode_head.cls_emb" in state_dict
    _check_decoder(model_name, linear, has_mask, "decode_head.conv_seg.weight" in state_dict, origin, "mmseg")
    backbone_keys = [k for k in source.keys() if k.startswith("backbone.")]
    dropped = []
    backbone = convert_vit_mmseg({k: source.tensors[k] for k in backbone_keys}, final_norm=True, dropped=dropped)
    source.consumed.update(backbone_keys)
    source.dropped.extend(f"backbone.{k}" for k in dropped)
    target = TargetDict()
    _put_backbone(target, backbone, "backbone.*")
    if linear:
        apply_rename_table(source, target, MMSEG_LINEAR_TABLE)
    else:
        source.drop(MMSEG_MASK_DROPPED)
        apply_rename_table(source, target, MMSEG_MASK_TABLE)
    source.check_consumed(f"{model_name} (mmseg Segmenter layout)")
    return _finish(source, target, model_name, variant, linear, {}, img_size)


def convert_segmenter_timm(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict", img_size: int | None = None,
) -> ConversionResult:
    """Converts a timm ViT (`vit_*_patch16_384.augreg_in21k_ft_in1k`; a JAX / AugReg `.npz` too) as backbone-only
    weights with mmseg's numerics, seglab's defaults (the model's bicubic position-embedding resampling).

    These are the weights mmseg's `pretrain/segmenter/vit_*_p16_384_20220308-*.pth` were converted from (with
    `vitjax2mmseg.py`), so the result equals that of `convert_segmenter_mmseg` on the mmseg file; the `official`
    source takes the same timm file with the original code's numerics (`interpolate_mode="bilinear"`) instead.

    Args:
        state_dict: a timm `VisionTransformer` state dict (`patch_embed.proj`, `blocks.{i}.*`, `norm`, `head`).
        model_name: `segmenter_vit_t` .. `segmenter_vit_l` or `segmenter_vit_s_linear`.
        origin: the file name, for error messages.
        img_size: the crop to resample the position embedding for (default the variant's), returned as the
            `img_size` override.
    """
    segmenter_variant(model_name, "timm")
    if any(k.startswith(("encoder.", "decoder.", "decode_head.", "backbone.")) for k in state_dict):
        raise ValueError(f"{origin}: a whole Segmenter checkpoint, not a timm ViT; convert it with source 'official' "
                         f"(rstrudel/segmenter) or 'mmseg'")
    source = SourceKeys(state_dict, origin)
    return imagenet_vit_backbone(source, convert_vit_timm, model_name, _img_size_option(img_size), final_norm=True)
