"""SegNeXt checkpoints (official Visual-Attention-Network/SegNeXt and mmsegmentation 1.x) -> seglab.

Official layout (mmseg 0.x based, `mmseg/models/backbones/mscan.py`, `mmseg/models/decode_heads/ham_head.py`):
`backbone.patch_embed1.proj.{0,1,3,4}` (stem `nn.Sequential`: conv, BN, GELU, conv, BN), `backbone.patch_embed{2,3,4}
.{proj,norm}` (conv + BN), `backbone.block{1..4}.{j}.` blocks with `norm1`, `norm2` (BN), `layer_scale_{1,2}`,
`attn.proj_1`, `attn.spatial_gating_unit.{conv0,conv0_1,conv0_2,conv1_1,conv1_2,conv2_1,conv2_2,conv3}`,
`attn.proj_2`, `mlp.fc1`, `mlp.dwconv.dwconv` (a `DWConv` wrapper), `mlp.fc2`, and `backbone.norm{1..4}` (stage
LayerNorms). Head (`LightHamHead`, mmcv ConvModules): `decode_head.squeeze.{conv,gn}`,
`decode_head.hamburger.ham_in.conv` (with bias, no norm), `decode_head.hamburger.ham_out.{conv,gn}`,
`decode_head.align.{conv,gn}`, `decode_head.conv_seg` (the classifier). The NMF has no tensors (`rand_init=True`).

mmsegmentation 1.x (`MSCAN`, `MSCABlock`, `LightHamHead`): the same keys, except that the MLP's depth-wise conv is a
direct child (`mlp.dwconv.{weight,bias}`); the wrapped spelling of the 0.x-era port is accepted as well.

Numerics: seglab's defaults are the official ones. mmseg 1.x's B and L configs inherit `MD_R=16` from the T config
(the official B/L use the code default 64); the NMF rank is no tensor shape, so the mmseg converter always sets
`ham_rank=16`. A classifier whose input width is not the variant's published head width becomes a `head_channels`
override, and `num_classes` is read from the classifier.

The ImageNet MSCAN encoders (`mscan_t.pth` .. `mscan_l.pth`, official or mmseg) hold the backbone keys without the
`backbone.` prefix, possibly with an ImageNet classifier `head.{weight,bias}`; with no `decode_head.*` key the
checkpoint converts as backbone-only and the classifier is dropped.
"""

from __future__ import annotations

import re
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
    stage_from_one_based,
)

# NOTE: mmseg 1.x B/L configs inherit `ham_kwargs=dict(MD_R=16, ...)` from the T config (nested dicts merge).
MMSEG_OVERRIDES: dict[str, Any] = {"ham_rank": 16}

_PARAM = r"(weight|bias)"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_BACKBONE = r"(?:backbone\.)?"  # segmentors prefix the encoder keys, the ImageNet `mscan_*.pth` files do not
_BLOCK = rf"{_BACKBONE}block([1-4])\.(\d+)"

# index in the official stem `nn.Sequential` -> seglab's `StemConv` child (index 2 is the parameter-free GELU)
STEM_CHILDREN = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}
# official `AttentionModule` conv -> seglab `MSCA` child; branch i is `conv{i}_1` (1 x k) then `conv{i}_2` (k x 1)
MSCA_CHILDREN = {
    "conv0": "square",
    "conv0_1": "horizontal.0",
    "conv0_2": "vertical.0",
    "conv1_1": "horizontal.1",
    "conv1_2": "vertical.1",
    "conv2_1": "horizontal.2",
    "conv2_2": "vertical.2",
    "conv3": "mix",
}


def _block_prefix(match: re.Match[str]) -> str:
    return f"backbone.stages.{stage_from_one_based(match[1])}.blocks.{match[2]}"


def _backbone_table(dwconv: str) -> list[RenameRule]:
    """MSCAN renames; `dwconv` is the source pattern of the MLP depth-wise conv module under `mlp.`."""
    msca = "|".join(MSCA_CHILDREN)
    return [
        RenameRule(rf"{_BACKBONE}patch_embed1\.proj\.([03])\.{_PARAM}",
                   lambda m: f"backbone.stages.0.patch_embed.{STEM_CHILDREN[m[1]]}.{m[2]}"),
        RenameRule(rf"{_BACKBONE}patch_embed1\.proj\.([14])\.{_BN}",
                   lambda m: f"backbone.stages.0.patch_embed.{STEM_CHILDREN[m[1]]}.{m[2]}"),
        RenameRule(rf"{_BACKBONE}patch_embed([2-4])\.proj\.{_PARAM}",
                   lambda m: f"backbone.stages.{stage_from_one_based(m[1])}.patch_embed.proj.{m[2]}"),
        RenameRule(rf"{_BACKBONE}patch_embed([2-4])\.norm\.{_BN}",
                   lambda m: f"backbone.stages.{stage_from_one_based(m[1])}.patch_embed.norm.{m[2]}"),
        RenameRule(rf"{_BLOCK}\.(norm1|norm2)\.{_BN}", lambda m: f"{_block_prefix(m)}.{m[3]}.{m[4]}"),
        RenameRule(rf"{_BLOCK}\.(layer_scale_1|layer_scale_2)", lambda m: f"{_block_prefix(m)}.{m[3]}"),
        RenameRule(rf"{_BLOCK}\.attn\.(proj_1|proj_2)\.{_PARAM}", lambda m: f"{_block_prefix(m)}.attn.{m[3]}.{m[4]}"),
        RenameRule(rf"{_BLOCK}\.attn\.spatial_gating_unit\.({msca})\.{_PARAM}",
                   lambda m: f"{_block_prefix(m)}.attn.msca.{MSCA_CHILDREN[m[3]]}.{m[4]}"),
        RenameRule(rf"{_BLOCK}\.mlp\.(fc1|fc2)\.{_PARAM}", lambda m: f"{_block_prefix(m)}.mlp.{m[3]}.{m[4]}"),
        RenameRule(rf"{_BLOCK}\.mlp\.{dwconv}\.{_PARAM}", lambda m: f"{_block_prefix(m)}.mlp.dwconv.{m[3]}"),
        RenameRule(rf"{_BACKBONE}norm([1-4])\.{_PARAM}",
                   lambda m: f"backbone.stages.{stage_from_one_based(m[1])}.norm.{m[2]}"),
    ]


# mmcv ConvModules: the conv has no bias when a norm follows; the GroupNorm child is named `gn`
HEAD_TABLE: list[RenameRule] = [
    RenameRule(r"decode_head\.(squeeze|align)\.conv\.weight", r"decode_head.\1.conv.weight"),
    RenameRule(rf"decode_head\.(squeeze|align)\.gn\.{_PARAM}", r"decode_head.\1.norm.\2"),
    RenameRule(rf"decode_head\.hamburger\.ham_in\.conv\.{_PARAM}", r"decode_head.hamburger.ham_in.conv.\1"),
    RenameRule(r"decode_head\.hamburger\.ham_out\.conv\.weight", "decode_head.hamburger.ham_out.conv.weight"),
    RenameRule(rf"decode_head\.hamburger\.ham_out\.gn\.{_PARAM}", r"decode_head.hamburger.ham_out.norm.\1"),
    RenameRule(rf"decode_head\.conv_seg\.{_PARAM}", r"decode_head.classifier.\1"),
]

OFFICIAL_SEGNEXT_TABLE = _backbone_table(dwconv=r"dwconv\.dwconv") + HEAD_TABLE
# mmseg 1.x holds the depth-wise conv directly; the wrapped form (mmseg 0.x-era port) reads the same
MMSEG_SEGNEXT_TABLE = _backbone_table(dwconv=r"dwconv(?:\.dwconv)?") + HEAD_TABLE

# the ImageNet classifier of `mscan_*.pth` (`nn.Linear(embed_dims[3], 1000)`), useless for segmentation
BACKBONE_DROPPED = [rf"head\.{_PARAM}"]


def segnext_variant(model_name: str, source: str) -> str:
    """`segnext_b` -> `b`; any other model name is refused with the list of supported ones.

    Args:
        model_name: the seglab model the weights are for.
        source: the checkpoint layout's name, for the message.
    """
    from seglab.models.segnext import SEGNEXT_VARIANTS

    return model_variant(model_name, "segnext_", SEGNEXT_VARIANTS, "SegNeXt", source)


def segnext_head_options(target: TargetDict, variant: str) -> tuple[int, dict[str, Any]]:
    """Reads `num_classes` and the head width from the converted classifier; a width other than the variant's
    published one becomes a `head_channels` override."""
    from seglab.models.segnext import SEGNEXT_VARIANTS

    key = "decode_head.classifier.weight"
    if key not in target.tensors:
        raise ValueError("the checkpoint has decode-head keys but no classifier `decode_head.conv_seg.weight`; is it "
                         "truncated? (a backbone-only checkpoint holds no `decode_head.*` key at all)")
    weight = target.tensors[key]
    if weight.ndim != 4:
        raise ValueError(f"{target.origin[key]!r}: expected a 1x1 conv weight (classes, channels, 1, 1), "
                         f"got shape {tuple(weight.shape)}")
    num_classes, channels = weight.shape[:2]
    overrides = {} if channels == SEGNEXT_VARIANTS[variant].head_channels else {"head_channels": int(channels)}
    return int(num_classes), overrides


def _convert(
    state_dict: dict[str, torch.Tensor],
    model_name: str,
    origin: str,
    layout: str,
    table: list[RenameRule],
    overrides: dict[str, Any],
) -> ConversionResult:
    """Renames every key of a SegNeXt segmentor (or MSCAN encoder) state dict and checks the result."""
    variant = segnext_variant(model_name, layout)
    backbone_only = not has_decode_head(state_dict)
    source = SourceKeys(state_dict, origin)
    if backbone_only:
        for pattern in BACKBONE_DROPPED:
            source.drop(pattern)
    target = TargetDict()
    apply_rename_table(source, target, table)
    if backbone_only:
        # the head is trained from scratch on top of these weights: no head option applies
        source.check_consumed(f"{model_name} ({layout} layout, backbone only)")
        return finalize(source, target, model_name, None, {}, backbone_only=True)
    source.check_consumed(f"{model_name} ({layout} layout)")
    num_classes, head_overrides = segnext_head_options(target, variant)
    return finalize(source, target, model_name, num_classes, {**overrides, **head_overrides})


def convert_segnext_official(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts an official SegNeXt segmentor state dict, or an ImageNet `mscan_*.pth` encoder.

    Args:
        state_dict: the checkpoint's `state_dict` (keys start with `backbone.` and `decode_head.`), or the
            encoder's (`patch_embed1.*` ... `norm4.*`, maybe `head.*`): then the result is backbone-only.
        model_name: the seglab model the weights are for, `segnext_t` .. `segnext_l`.
        origin: the file name, for error messages.
    """
    return _convert(state_dict, model_name, origin, "official", OFFICIAL_SEGNEXT_TABLE, {})


def convert_segnext_mmseg(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts an mmsegmentation 1.x SegNeXt (`MSCAN` + `LightHamHead`) state dict, or an mmseg MSCAN encoder.

    The result carries `ham_rank=16` (mmseg 1.x's NMF rank for every variant) unless it is backbone-only.

    Args:
        state_dict: the checkpoint's `state_dict` (keys start with `backbone.` and `decode_head.`), or the
            encoder's (no prefix, maybe `head.*`): then the result is backbone-only.
        model_name: the seglab model the weights are for, `segnext_t` .. `segnext_l`.
        origin: the file name, for error messages.
    """
    return _convert(state_dict, model_name, origin, "mmseg", MMSEG_SEGNEXT_TABLE, MMSEG_OVERRIDES)
