"""Official NVlabs/SegFormer checkpoints (`segformer.b*.*.pth`, mmseg 0.x segmentors) -> seglab.

Layout (`mmseg/models/backbones/mix_transformer.py`, `mmseg/models/decode_heads/segformer_head.py`):
`backbone.patch_embed{1..4}.{proj,norm}`, `backbone.block{1..4}.{j}.{norm1,attn.q,attn.kv,attn.proj,attn.sr,
attn.norm,norm2,mlp.fc1,mlp.dwconv.dwconv,mlp.fc2}`, `backbone.norm{1..4}`; head `decode_head.linear_c{1..4}.proj`
(Linear), `decode_head.linear_fuse.{conv,bn}` (ConvModule, conv without bias), `decode_head.linear_pred`
(the classifier). `decode_head.conv_seg` is created by mmseg's `BaseDecodeHead` but never used by the official
head's forward, so it is dropped. The fuse conv consumes `cat([c4, c3, c2, c1])`, seglab's order: no permutation.
Our defaults are the official LayerNorm eps (1e-6 in blocks and stage norms, 1e-5 in patch embeddings and after
the reduction conv).

The ImageNet-1k encoders of the release (`mit_b0.pth` .. `mit_b5.pth`) hold the same backbone keys without the
`backbone.` prefix, plus the classifier `head.{weight,bias}` (Linear, 1000 x C4); with no `decode_head.*` key the
checkpoint converts as backbone-only and the classifier is dropped.
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
    finish_segformer,
    has_decode_head,
    linear_to_conv1x1,
    segformer_variant,
    stage_from_one_based,
)

OFFICIAL_OVERRIDES = {"norm_eps": 1e-6, "patch_norm_eps": 1e-5, "sr_norm_eps": 1e-5}

_PARAM = r"(weight|bias)"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_BLOCK_LEAVES = r"(norm1|norm2|attn\.q|attn\.kv|attn\.proj|attn\.sr|attn\.norm|mlp\.fc1|mlp\.fc2)"
_BACKBONE = r"(?:backbone\.)?"  # segmentors prefix the encoder keys, the ImageNet `mit_b*.pth` files do not


def _stage(match: re.Match[str]) -> int:
    return stage_from_one_based(match[1])


OFFICIAL_SEGFORMER_TABLE: list[RenameRule] = [
    RenameRule(rf"{_BACKBONE}patch_embed([1-4])\.(proj|norm)\.{_PARAM}",
               lambda m: f"backbone.stages.{_stage(m)}.patch_embed.{m[2]}.{m[3]}"),
    RenameRule(rf"{_BACKBONE}block([1-4])\.(\d+)\.{_BLOCK_LEAVES}\.{_PARAM}",
               lambda m: f"backbone.stages.{_stage(m)}.blocks.{m[2]}.{m[3]}.{m[4]}"),
    RenameRule(rf"{_BACKBONE}block([1-4])\.(\d+)\.mlp\.dwconv\.dwconv\.{_PARAM}",
               lambda m: f"backbone.stages.{_stage(m)}.blocks.{m[2]}.mlp.dwconv.{m[3]}"),
    RenameRule(rf"{_BACKBONE}norm([1-4])\.{_PARAM}", lambda m: f"backbone.stages.{_stage(m)}.norm.{m[2]}"),
    RenameRule(r"decode_head\.linear_c([1-4])\.proj\.weight",
               lambda m: f"decode_head.linear_c.{_stage(m)}.conv.weight", linear_to_conv1x1),
    RenameRule(r"decode_head\.linear_c([1-4])\.proj\.bias", lambda m: f"decode_head.linear_c.{_stage(m)}.conv.bias"),
    RenameRule(r"decode_head\.linear_fuse\.conv\.weight", "decode_head.linear_fuse.conv.weight"),
    RenameRule(rf"decode_head\.linear_fuse\.bn\.{_BN}", r"decode_head.linear_fuse.norm.\1"),
    RenameRule(rf"decode_head\.linear_pred\.{_PARAM}", r"decode_head.classifier.\1"),
]

# NOTE: mmseg's BaseDecodeHead builds `conv_seg` (channels=128 in the official configs); SegFormerHead never calls it.
OFFICIAL_DROPPED = [rf"decode_head\.conv_seg\.{_PARAM}"]
# the ImageNet-1k classifier of `mit_b*.pth` (`nn.Linear(embed_dims[3], 1000)`), useless for segmentation
OFFICIAL_BACKBONE_DROPPED = [rf"head\.{_PARAM}"]


def convert_segformer_official(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts an official NVlabs SegFormer segmentor state dict, or an ImageNet `mit_b*.pth` encoder.

    Args:
        state_dict: the checkpoint's `state_dict` (keys start with `backbone.` and `decode_head.`), or the
            encoder's (`patch_embed1.*` ... `norm4.*`, `head.*`): then the result is backbone-only.
        model_name: the seglab model the weights are for, `segformer_b0` .. `segformer_b5`.
        origin: the file name, for error messages.
    """
    variant = segformer_variant(model_name, "official")
    backbone_only = not has_decode_head(state_dict)
    source = SourceKeys(state_dict, origin)
    for pattern in OFFICIAL_BACKBONE_DROPPED if backbone_only else OFFICIAL_DROPPED:
        source.drop(pattern)
    target = TargetDict()
    apply_rename_table(source, target, OFFICIAL_SEGFORMER_TABLE)
    return finish_segformer(source, target, model_name, variant, "official", OFFICIAL_OVERRIDES, backbone_only)
