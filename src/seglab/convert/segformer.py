"""SegFormer checkpoints (official NVlabs/SegFormer, mmsegmentation, Hugging Face transformers) -> seglab.

One section per source layout; all three end in `finish_segformer` (every source key used, `num_classes` and the
head width read from the classifier, the result checked against `create_model`). Our defaults are the official
LayerNorm eps; each layout's overrides reproduce its own numerics.

Official (`official`, NVlabs `segformer.b*.*.pth`, mmseg 0.x segmentors; `mmseg/models/backbones/mix_transformer.py`,
`mmseg/models/decode_heads/segformer_head.py`): `backbone.patch_embed{1..4}.{proj,norm}`, `backbone.block{1..4}.{j}.
{norm1,attn.q,attn.kv,attn.proj,attn.sr,attn.norm,norm2,mlp.fc1,mlp.dwconv.dwconv,mlp.fc2}`, `backbone.norm{1..4}`;
head `decode_head.linear_c{1..4}.proj` (Linear), `decode_head.linear_fuse.{conv,bn}` (ConvModule, conv without
bias), `decode_head.linear_pred` (the classifier). `decode_head.conv_seg` is created by mmseg's `BaseDecodeHead` but
never used by the official head's forward, so it is dropped. The fuse conv consumes `cat([c4, c3, c2, c1])`,
seglab's order: no permutation. LayerNorm eps 1e-6 in blocks and stage norms, 1e-5 in patch embeddings and after
the reduction conv. The ImageNet-1k encoders of the release (`mit_b0.pth` .. `mit_b5.pth`) hold the same backbone
keys without the `backbone.` prefix, plus the classifier `head.{weight,bias}` (Linear, 1000 x C4), which is dropped.

mmsegmentation (`mmseg`, `segformer_mit-b*_*.pth`, mmseg 0.x and 1.x; `mmseg/models/backbones/mit.py`):
`backbone.layers.{i}.0.{projection,norm}` (patch embedding), `backbone.layers.{i}.1.{j}.` blocks with `norm1`,
`attn.attn.in_proj_{weight,bias}` (`nn.MultiheadAttention`, rows `[q; k; v]`), `attn.attn.out_proj`, `attn.sr`,
`attn.norm`, `norm2`, `ffn.layers.{0,1,4}` (1x1 conv, 3x3 depth-wise conv, 1x1 conv: 4-D weights), and
`backbone.layers.{i}.2` (stage norm). Head: `decode_head.convs.{i}` (ConvModule: conv without bias + BN + ReLU per
stage), `decode_head.fusion_conv` (ConvModule, stages concatenated shallow first), `decode_head.conv_seg` (the
classifier). Differences from the official model that the overrides reproduce: every LayerNorm has eps 1e-6, and
the per-stage projections carry BN + ReLU (`head_stage_norm_act=True`). An ImageNet encoder converted by mmseg's
`tools/model_converters/mit2mmseg.py` holds the same backbone keys without the `backbone.` prefix and no classifier;
it converts with the eps overrides alone.

Hugging Face (`hf`, transformers `SegformerForSemanticSegmentation`), two key layouts, both accepted:
- hub files (`nvidia/segformer-b*-finetuned-*`, and what `save_pretrained` still writes):
  `segformer.encoder.patch_embeddings.{i}.{proj,layer_norm}`, `segformer.encoder.block.{i}.{j}.` with
  `layer_norm_1`, `attention.self.{query,key,value,sr,layer_norm}`, `attention.output.dense`, `layer_norm_2`,
  `mlp.{dense1,dwconv.dwconv,dense2}`; `segformer.encoder.layer_norm.{i}`; head `decode_head.linear_c.{i}.proj`;
- the module names of transformers >= 5 (`model.state_dict()`): `segformer.stages.{i}.patch_embeddings`,
  `segformer.stages.{i}.blocks.{j}.` with `layernorm_before`, `attention.{q,k,v,o}_proj`,
  `attention.sequence_reduction.{sequence_reduction,layer_norm}`, `layernorm_after`, `mlp.{fc1,dwconv.dwconv,fc2}`;
  `segformer.stages.{i}.layer_norm`; head `decode_head.linear_projections.{i}.proj`.
Both share `decode_head.linear_fuse.weight` (1x1 conv, no bias), `decode_head.batch_norm`, `decode_head.classifier`,
and concatenate the stages deepest first like seglab. Keys and values are separate linears; seglab fuses them into
`kv` (rows `[k; v]`, as in the original code). HF builds every LayerNorm as `nn.LayerNorm(hidden_size)`, eps 1e-5,
whatever `config.layer_norm_eps` says; the overrides reproduce that. The ImageNet-1k encoders (`nvidia/mit-b0` ..
`nvidia/mit-b5`, `SegformerForImageClassification`) hold the same `segformer.*` keys plus the classifier
`classifier.{weight,bias}` (Linear, 1000 x C4), which is dropped; a bare `SegformerModel` has the encoder keys
without the `segformer.` prefix.

In every layout a checkpoint with no `decode_head.*` key converts as backbone-only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from seglab.convert.common import (
    ConversionResult,
    RenameRule,
    SourceKeys,
    TargetDict,
    apply_rename_table,
    conv1x1_to_linear,
    finalize,
    has_decode_head,
    linear_to_conv1x1,
    model_variant,
    permute_concat_blocks,
    split_rows,
    stage_from_one_based,
)

_PARAM = r"(weight|bias)"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_NUM_STAGES = 4


# ---------------------------------------------------------------------------------------------------- shared
def segformer_variant(model_name: str, source: str) -> str:
    """`segformer_b2` -> `b2`; any other model name is refused with the list of supported ones."""
    from seglab.models.segformer import SEGFORMER_VARIANTS

    return model_variant(model_name, "segformer_", SEGFORMER_VARIANTS, "SegFormer", source)


def segformer_head_options(target: TargetDict, variant: str) -> tuple[int, dict[str, Any]]:
    """Reads `num_classes` and the head width from the converted classifier; a non-published width becomes
    a `head_channels` override."""
    from seglab.models.segformer import SEGFORMER_VARIANTS

    key = "decode_head.classifier.weight"
    if key not in target.tensors:
        raise ValueError("the checkpoint has decode-head keys but no decode-head classifier; is it truncated? "
                         "(a backbone-only checkpoint holds no `decode_head.*` key at all)")
    weight = target.tensors[key]
    if weight.ndim != 4:
        raise ValueError(f"{target.origin[key]!r}: expected a 1x1 conv weight (classes, channels, 1, 1), "
                         f"got shape {tuple(weight.shape)}")
    num_classes, channels = weight.shape[:2]
    overrides = {} if channels == SEGFORMER_VARIANTS[variant].head_channels else {"head_channels": int(channels)}
    return int(num_classes), overrides


def finish_segformer(
    source: SourceKeys,
    target: TargetDict,
    model_name: str,
    variant: str,
    layout: str,
    overrides: dict,
    backbone_only: bool,
    backbone_overrides: dict | None = None,
) -> ConversionResult:
    """The common end of every SegFormer converter: every source key used, then the result checked.

    Args:
        source: the source keys, all of them renamed or dropped by now.
        target: the converted tensors.
        model_name: the seglab model the weights are for.
        variant: its variant (`b0` .. `b5`).
        layout: the source layout's name, for messages.
        overrides: constructor options a whole-model checkpoint of this source needs.
        backbone_only: the source holds an encoder only.
        backbone_overrides: options of a backbone-only result (default `overrides`).
    """
    if backbone_only:
        source.check_consumed(f"{model_name} ({layout} layout, backbone only)")
        return finalize(source, target, model_name, None,
                        overrides if backbone_overrides is None else backbone_overrides, backbone_only=True)
    source.check_consumed(f"{model_name} ({layout} layout)")
    num_classes, head_overrides = segformer_head_options(target, variant)
    return finalize(source, target, model_name, num_classes, {**overrides, **head_overrides})


# ---------------------------------------------------------------------------------------------------- official
OFFICIAL_OVERRIDES = {"norm_eps": 1e-6, "patch_norm_eps": 1e-5, "sr_norm_eps": 1e-5}

_OFFICIAL_BLOCK_LEAVES = r"(norm1|norm2|attn\.q|attn\.kv|attn\.proj|attn\.sr|attn\.norm|mlp\.fc1|mlp\.fc2)"
_OFFICIAL_BACKBONE = r"(?:backbone\.)?"  # segmentors prefix the encoder keys, the ImageNet `mit_b*.pth` files do not


def _official_stage(match: re.Match[str]) -> int:
    return stage_from_one_based(match[1])


OFFICIAL_SEGFORMER_TABLE: list[RenameRule] = [
    RenameRule(rf"{_OFFICIAL_BACKBONE}patch_embed([1-4])\.(proj|norm)\.{_PARAM}",
               lambda m: f"backbone.stages.{_official_stage(m)}.patch_embed.{m[2]}.{m[3]}"),
    RenameRule(rf"{_OFFICIAL_BACKBONE}block([1-4])\.(\d+)\.{_OFFICIAL_BLOCK_LEAVES}\.{_PARAM}",
               lambda m: f"backbone.stages.{_official_stage(m)}.blocks.{m[2]}.{m[3]}.{m[4]}"),
    RenameRule(rf"{_OFFICIAL_BACKBONE}block([1-4])\.(\d+)\.mlp\.dwconv\.dwconv\.{_PARAM}",
               lambda m: f"backbone.stages.{_official_stage(m)}.blocks.{m[2]}.mlp.dwconv.{m[3]}"),
    RenameRule(rf"{_OFFICIAL_BACKBONE}norm([1-4])\.{_PARAM}",
               lambda m: f"backbone.stages.{_official_stage(m)}.norm.{m[2]}"),
    RenameRule(r"decode_head\.linear_c([1-4])\.proj\.weight",
               lambda m: f"decode_head.linear_c.{_official_stage(m)}.conv.weight", linear_to_conv1x1),
    RenameRule(r"decode_head\.linear_c([1-4])\.proj\.bias",
               lambda m: f"decode_head.linear_c.{_official_stage(m)}.conv.bias"),
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


# ---------------------------------------------------------------------------------------------------- mmseg
MMSEG_EPS_OVERRIDES = {"norm_eps": 1e-6, "patch_norm_eps": 1e-6, "sr_norm_eps": 1e-6}
MMSEG_OVERRIDES = {**MMSEG_EPS_OVERRIDES, "head_stage_norm_act": True}

_MMSEG_BACKBONE = r"(?:backbone\.)?"  # segmentors prefix the encoder keys, `mit2mmseg` output does not
_MMSEG_BLOCK = rf"{_MMSEG_BACKBONE}layers\.(\d)\.1\.(\d+)"


def fuse_weight_to_seglab(weight: torch.Tensor) -> torch.Tensor:
    """mmseg concatenates the stage projections shallow first (c1..c4); seglab, like the paper's code, deepest
    first (c4..c1). Reorders the fuse conv's input-channel blocks accordingly."""
    return permute_concat_blocks(weight, order=list(reversed(range(_NUM_STAGES))), dim=1)


MMSEG_SEGFORMER_TABLE: list[RenameRule] = [
    RenameRule(rf"{_MMSEG_BACKBONE}layers\.(\d)\.0\.projection\.{_PARAM}", r"backbone.stages.\1.patch_embed.proj.\2"),
    RenameRule(rf"{_MMSEG_BACKBONE}layers\.(\d)\.0\.norm\.{_PARAM}", r"backbone.stages.\1.patch_embed.norm.\2"),
    RenameRule(rf"{_MMSEG_BLOCK}\.(norm1|norm2)\.{_PARAM}", r"backbone.stages.\1.blocks.\2.\3.\4"),
    RenameRule(rf"{_MMSEG_BLOCK}\.attn\.attn\.out_proj\.{_PARAM}", r"backbone.stages.\1.blocks.\2.attn.proj.\3"),
    RenameRule(rf"{_MMSEG_BLOCK}\.attn\.(sr|norm)\.{_PARAM}", r"backbone.stages.\1.blocks.\2.attn.\3.\4"),
    RenameRule(rf"{_MMSEG_BLOCK}\.ffn\.layers\.0\.weight", r"backbone.stages.\1.blocks.\2.mlp.fc1.weight",
               conv1x1_to_linear),
    RenameRule(rf"{_MMSEG_BLOCK}\.ffn\.layers\.0\.bias", r"backbone.stages.\1.blocks.\2.mlp.fc1.bias"),
    RenameRule(rf"{_MMSEG_BLOCK}\.ffn\.layers\.1\.{_PARAM}", r"backbone.stages.\1.blocks.\2.mlp.dwconv.\3"),
    RenameRule(rf"{_MMSEG_BLOCK}\.ffn\.layers\.4\.weight", r"backbone.stages.\1.blocks.\2.mlp.fc2.weight",
               conv1x1_to_linear),
    RenameRule(rf"{_MMSEG_BLOCK}\.ffn\.layers\.4\.bias", r"backbone.stages.\1.blocks.\2.mlp.fc2.bias"),
    RenameRule(rf"{_MMSEG_BACKBONE}layers\.(\d)\.2\.{_PARAM}", r"backbone.stages.\1.norm.\2"),
    RenameRule(r"decode_head\.convs\.(\d)\.conv\.weight", r"decode_head.linear_c.\1.conv.weight"),
    RenameRule(rf"decode_head\.convs\.(\d)\.bn\.{_BN}", r"decode_head.linear_c.\1.norm.\2"),
    RenameRule(r"decode_head\.fusion_conv\.conv\.weight", "decode_head.linear_fuse.conv.weight", fuse_weight_to_seglab),
    RenameRule(rf"decode_head\.fusion_conv\.bn\.{_BN}", r"decode_head.linear_fuse.norm.\1"),
    RenameRule(rf"decode_head\.conv_seg\.{_PARAM}", r"decode_head.classifier.\1"),
]


def _split_mmseg_in_proj(source: SourceKeys, target: TargetDict) -> None:
    """`attn.attn.in_proj_{weight,bias}` rows `[q; k; v]` -> seglab `attn.q` and `attn.kv` (rows `[k; v]`)."""
    for key in source.keys():
        match = re.fullmatch(rf"{_MMSEG_BLOCK}\.attn\.attn\.in_proj_{_PARAM}", key)
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
    _split_mmseg_in_proj(source, target)
    apply_rename_table(source, target, MMSEG_SEGFORMER_TABLE)
    return finish_segformer(source, target, model_name, variant, "mmseg", MMSEG_OVERRIDES, backbone_only,
                            backbone_overrides=MMSEG_EPS_OVERRIDES)


# ---------------------------------------------------------------------------------------------------- hf
HF_OVERRIDES = {"norm_eps": 1e-5, "patch_norm_eps": 1e-5, "sr_norm_eps": 1e-5}


@dataclass(frozen=True)
class _HFLayout:
    """Key patterns of one HF naming generation; `leaves` maps HF block leaves to seglab's."""

    patch: str
    block: str
    leaves: dict[str, str]
    key: str
    value: str
    stage_norm: str
    head_proj: str


_HF_PREFIX = r"(?:segformer\.)?"  # absent from a bare `SegformerModel`
_HF_LAYOUTS = [
    _HFLayout(  # hub files and save_pretrained
        patch=rf"{_HF_PREFIX}encoder\.patch_embeddings\.(\d)",
        block=rf"{_HF_PREFIX}encoder\.block\.(\d)\.(\d+)",
        leaves={
            "layer_norm_1": "norm1",
            "attention.self.query": "attn.q",
            "attention.self.sr": "attn.sr",
            "attention.self.layer_norm": "attn.norm",
            "attention.output.dense": "attn.proj",
            "layer_norm_2": "norm2",
            "mlp.dense1": "mlp.fc1",
            "mlp.dwconv.dwconv": "mlp.dwconv",
            "mlp.dense2": "mlp.fc2",
        },
        key="attention.self.key",
        value="attention.self.value",
        stage_norm=rf"{_HF_PREFIX}encoder\.layer_norm\.(\d)",
        head_proj=r"decode_head\.linear_c\.(\d)\.proj",
    ),
    _HFLayout(  # module names of transformers >= 5
        patch=rf"{_HF_PREFIX}stages\.(\d)\.patch_embeddings",
        block=rf"{_HF_PREFIX}stages\.(\d)\.blocks\.(\d+)",
        leaves={
            "layernorm_before": "norm1",
            "attention.q_proj": "attn.q",
            "attention.sequence_reduction.sequence_reduction": "attn.sr",
            "attention.sequence_reduction.layer_norm": "attn.norm",
            "attention.o_proj": "attn.proj",
            "layernorm_after": "norm2",
            "mlp.fc1": "mlp.fc1",
            "mlp.dwconv.dwconv": "mlp.dwconv",
            "mlp.fc2": "mlp.fc2",
        },
        key="attention.k_proj",
        value="attention.v_proj",
        stage_norm=rf"{_HF_PREFIX}stages\.(\d)\.layer_norm",
        head_proj=r"decode_head\.linear_projections\.(\d)\.proj",
    ),
]


# the ImageNet-1k classifier of `SegformerForImageClassification`, useless for segmentation
HF_BACKBONE_DROPPED = [rf"classifier\.{_PARAM}"]


def _hf_layout_rules(layout: _HFLayout) -> list[RenameRule]:
    rules = [
        RenameRule(rf"{layout.patch}\.proj\.{_PARAM}", r"backbone.stages.\1.patch_embed.proj.\2"),
        RenameRule(rf"{layout.patch}\.layer_norm\.{_PARAM}", r"backbone.stages.\1.patch_embed.norm.\2"),
    ]
    rules += [
        RenameRule(rf"{layout.block}\.{re.escape(hf_leaf)}\.{_PARAM}", rf"backbone.stages.\1.blocks.\2.{leaf}.\3")
        for hf_leaf, leaf in layout.leaves.items()
    ]
    rules += [
        RenameRule(rf"{layout.stage_norm}\.{_PARAM}", r"backbone.stages.\1.norm.\2"),
        RenameRule(rf"{layout.head_proj}\.weight", r"decode_head.linear_c.\1.conv.weight", linear_to_conv1x1),
        RenameRule(rf"{layout.head_proj}\.bias", r"decode_head.linear_c.\1.conv.bias"),
    ]
    return rules


HF_SEGFORMER_TABLE: list[RenameRule] = [
    *(rule for layout in _HF_LAYOUTS for rule in _hf_layout_rules(layout)),
    RenameRule(r"decode_head\.linear_fuse\.weight", "decode_head.linear_fuse.conv.weight"),
    RenameRule(rf"decode_head\.batch_norm\.{_BN}", r"decode_head.linear_fuse.norm.\1"),
    RenameRule(rf"decode_head\.classifier\.{_PARAM}", r"decode_head.classifier.\1"),
]


def _merge_hf_key_value(source: SourceKeys, target: TargetDict) -> None:
    """Separate key and value linears -> seglab's fused `attn.kv` (rows `[k; v]`)."""
    for layout in _HF_LAYOUTS:
        pattern = rf"{layout.block}\.{re.escape(layout.key)}\.{_PARAM}"
        for key in source.keys():
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            value_key = key.replace(f".{layout.key}.", f".{layout.value}.")
            k, v = source.take(key), source.take(value_key)
            if k.shape != v.shape:
                raise ValueError(f"{key} has shape {tuple(k.shape)} but {value_key} has {tuple(v.shape)}")
            target.put(f"backbone.stages.{match[1]}.blocks.{match[2]}.attn.kv.{match[3]}", torch.cat([k, v]), key)


def convert_segformer_hf(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts a transformers `SegformerForSemanticSegmentation` state dict (hub or transformers >= 5 names), or
    an ImageNet encoder (`SegformerForImageClassification`, `SegformerModel`).

    Args:
        state_dict: the model's tensors (`model.safetensors` of a hub repo, or `model.state_dict()`); without
            `decode_head.*` keys the result is backbone-only.
        model_name: the seglab model the weights are for, `segformer_b0` .. `segformer_b5`.
        origin: the file name, for error messages.
    """
    variant = segformer_variant(model_name, "hf")
    backbone_only = not has_decode_head(state_dict)
    source = SourceKeys(state_dict, origin)
    if backbone_only:
        for pattern in HF_BACKBONE_DROPPED:
            source.drop(pattern)
    target = TargetDict()
    _merge_hf_key_value(source, target)
    apply_rename_table(source, target, HF_SEGFORMER_TABLE)
    return finish_segformer(source, target, model_name, variant, "Hugging Face", HF_OVERRIDES, backbone_only)
