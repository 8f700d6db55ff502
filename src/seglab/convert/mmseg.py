"""mmsegmentation SegFormer checkpoints (`segformer_mit-b*_*.pth`, mmseg 0.x and 1.x) -> seglab.

Layout (`mmseg/models/backbones/mit.py`, `mmseg/models/decode_heads/segformer_head.py`):
`backbone.layers.{i}.0.{projection,norm}` (patch embedding), `backbone.layers.{i}.1.{j}.` blocks with
`norm1`, `attn.attn.in_proj_{weight,bias}` (`nn.MultiheadAttention`, rows `[q; k; v]`), `attn.attn.out_proj`,
`attn.sr`, `attn.norm`, `norm2`, `ffn.layers.{0,1,4}` (1x1 conv, 3x3 depth-wise conv, 1x1 conv: 4-D weights),
and `backbone.layers.{i}.2` (stage norm). Head: `decode_head.convs.{i}` (ConvModule: conv without bias + BN + ReLU
per stage), `decode_head.fusion_conv` (ConvModule), `decode_head.conv_seg` (the classifier).

Differences from the official model that the overrides reproduce: every LayerNorm has eps 1e-6, and the per-stage
projections carry BN + ReLU (`head_stage_norm_act=True`).

An ImageNet encoder converted by mmseg's `tools/model_converters/mit2mmseg.py` holds the same backbone keys without
the `backbone.` prefix (`layers.{i}...`) and no classifier (the tool skips `head.*`); with no `decode_head.*` key the
checkpoint converts as backbone-only, with the eps overrides alone.
"""

from __future__ import annotations

import re

import torch

from seglab.convert.common import (
    ConversionResult,
    RenameRule,
    SourceKeys,
    TargetDict,
    apply_rename_table,
    conv1x1_to_linear,
    finish_segformer,
    has_decode_head,
    permute_concat_blocks,
    segformer_variant,
    split_rows,
)

MMSEG_EPS_OVERRIDES = {"norm_eps": 1e-6, "patch_norm_eps": 1e-6, "sr_norm_eps": 1e-6}
MMSEG_OVERRIDES = {**MMSEG_EPS_OVERRIDES, "head_stage_norm_act": True}

_PARAM = r"(weight|bias)"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_BACKBONE = r"(?:backbone\.)?"  # segmentors prefix the encoder keys, `mit2mmseg` output does not
_BLOCK = rf"{_BACKBONE}layers\.(\d)\.1\.(\d+)"
_NUM_STAGES = 4


def fuse_weight_to_seglab(weight: torch.Tensor) -> torch.Tensor:
    """mmseg concatenates the stage projections shallow first (c1..c4); seglab, like the paper's code, deepest
    first (c4..c1). Reorders the fuse conv's input-channel blocks accordingly."""
    return permute_concat_blocks(weight, order=list(reversed(range(_NUM_STAGES))), dim=1)


MMSEG_SEGFORMER_TABLE: list[RenameRule] = [
    RenameRule(rf"{_BACKBONE}layers\.(\d)\.0\.projection\.{_PARAM}", r"backbone.stages.\1.patch_embed.proj.\2"),
    RenameRule(rf"{_BACKBONE}layers\.(\d)\.0\.norm\.{_PARAM}", r"backbone.stages.\1.patch_embed.norm.\2"),
    RenameRule(rf"{_BLOCK}\.(norm1|norm2)\.{_PARAM}", r"backbone.stages.\1.blocks.\2.\3.\4"),
    RenameRule(rf"{_BLOCK}\.attn\.attn\.out_proj\.{_PARAM}", r"backbone.stages.\1.blocks.\2.attn.proj.\3"),
    RenameRule(rf"{_BLOCK}\.attn\.(sr|norm)\.{_PARAM}", r"backbone.stages.\1.blocks.\2.attn.\3.\4"),
    RenameRule(rf"{_BLOCK}\.ffn\.layers\.0\.weight", r"backbone.stages.\1.blocks.\2.mlp.fc1.weight", conv1x1_to_linear),
    RenameRule(rf"{_BLOCK}\.ffn\.layers\.0\.bias", r"backbone.stages.\1.blocks.\2.mlp.fc1.bias"),
    RenameRule(rf"{_BLOCK}\.ffn\.layers\.1\.{_PARAM}", r"backbone.stages.\1.blocks.\2.mlp.dwconv.\3"),
    RenameRule(rf"{_BLOCK}\.ffn\.layers\.4\.weight", r"backbone.stages.\1.blocks.\2.mlp.fc2.weight", conv1x1_to_linear),
    RenameRule(rf"{_BLOCK}\.ffn\.layers\.4\.bias", r"backbone.stages.\1.blocks.\2.mlp.fc2.bias"),
    RenameRule(rf"{_BACKBONE}layers\.(\d)\.2\.{_PARAM}", r"backbone.stages.\1.norm.\2"),
    RenameRule(r"decode_head\.convs\.(\d)\.conv\.weight", r"decode_head.linear_c.\1.conv.weight"),
    RenameRule(rf"decode_head\.convs\.(\d)\.bn\.{_BN}", r"decode_head.linear_c.\1.norm.\2"),
    RenameRule(r"decode_head\.fusion_conv\.conv\.weight", "decode_head.linear_fuse.conv.weight", fuse_weight_to_seglab),
    RenameRule(rf"decode_head\.fusion_conv\.bn\.{_BN}", r"decode_head.linear_fuse.norm.\1"),
    RenameRule(rf"decode_head\.conv_seg\.{_PARAM}", r"decode_head.classifier.\1"),
]


def _split_in_proj(source: SourceKeys, target: TargetDict) -> None:
    """`attn.attn.in_proj_{weight,bias}` rows `[q; k; v]` -> seglab `attn.q` and `attn.kv` (rows `[k; v]`)."""
    for key in source.keys():
        match = re.fullmatch(rf"{_BLOCK}\.attn\.attn\.in_proj_{_PARAM}", key)
        if match is None:
            continue
        value = source.take(key)
        if value.shape[0] % 3:
            raise ValueError(f"{key}: dim 0 is {value.shape[0]}, expected a multiple of 3 ([q; k; v] rows)")
        dim = value.shape[0] // 3
        q, kv = split_rows(value, [dim, 2 * dim], key)
        prefix = f"backbone.stages.{match[1]}.blocks.{match[2]}.attn"
        target.put(f"{prefix}.q.{match[3]}", q, key)
        target.put(f"{prefix}.kv.{match[3]}", kv, key)


def convert_segformer_mmseg(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts an mmsegmentation SegFormer (`MixVisionTransformer` + `SegformerHead`) state dict, or a
    `mit2mmseg` ImageNet encoder.

    Args:
        state_dict: the checkpoint's `state_dict` (keys start with `backbone.` and `decode_head.`), or the
            encoder's (`layers.{i}.*`): then the result is backbone-only.
        model_name: the seglab model the weights are for, `segformer_b0` .. `segformer_b5`.
        origin: the file name, for error messages.
    """
    variant = segformer_variant(model_name, "mmseg")
    backbone_only = not has_decode_head(state_dict)
    source = SourceKeys(state_dict, origin)
    target = TargetDict()
    _split_in_proj(source, target)
    apply_rename_table(source, target, MMSEG_SEGFORMER_TABLE)
    return finish_segformer(source, target, model_name, variant, "mmseg", MMSEG_OVERRIDES, backbone_only,
                            backbone_overrides=MMSEG_EPS_OVERRIDES)
