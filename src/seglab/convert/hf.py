"""Hugging Face transformers SegFormer checkpoints (`SegformerForSemanticSegmentation`) -> seglab.

Two key layouts exist and both are accepted:
- hub files (`nvidia/segformer-b*-finetuned-*`, and what `save_pretrained` still writes):
  `segformer.encoder.patch_embeddings.{i}.{proj,layer_norm}`, `segformer.encoder.block.{i}.{j}.` with
  `layer_norm_1`, `attention.self.{query,key,value,sr,layer_norm}`, `attention.output.dense`, `layer_norm_2`,
  `mlp.{dense1,dwconv.dwconv,dense2}`; `segformer.encoder.layer_norm.{i}`; head `decode_head.linear_c.{i}.proj`;
- the module names of transformers >= 5 (`model.state_dict()`): `segformer.stages.{i}.patch_embeddings`,
  `segformer.stages.{i}.blocks.{j}.` with `layernorm_before`, `attention.{q,k,v,o}_proj`,
  `attention.sequence_reduction.{sequence_reduction,layer_norm}`, `layernorm_after`, `mlp.{fc1,dwconv.dwconv,fc2}`;
  `segformer.stages.{i}.layer_norm`; head `decode_head.linear_projections.{i}.proj`.
Both share `decode_head.linear_fuse.weight` (1x1 conv, no bias), `decode_head.batch_norm`, `decode_head.classifier`,
and concatenate the stages deepest first like seglab. Keys and values are separate linears; seglab fuses them
into `kv` (rows `[k; v]`, as in the original code).

HF builds every LayerNorm as `nn.LayerNorm(hidden_size)`, eps 1e-5, whatever `config.layer_norm_eps` says; the
overrides reproduce that.

The ImageNet-1k encoders (`nvidia/mit-b0` .. `nvidia/mit-b5`, `SegformerForImageClassification`) hold the same
`segformer.*` keys plus the classifier `classifier.{weight,bias}` (Linear, 1000 x C4); a bare `SegformerModel`
has the encoder keys without the `segformer.` prefix. With no `decode_head.*` key the checkpoint converts as
backbone-only and the classifier is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
)

HF_OVERRIDES = {"norm_eps": 1e-5, "patch_norm_eps": 1e-5, "sr_norm_eps": 1e-5}

_PARAM = r"(weight|bias)"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


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


_PREFIX = r"(?:segformer\.)?"  # absent from a bare `SegformerModel`
_LAYOUTS = [
    _HFLayout(  # hub files and save_pretrained
        patch=rf"{_PREFIX}encoder\.patch_embeddings\.(\d)",
        block=rf"{_PREFIX}encoder\.block\.(\d)\.(\d+)",
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
        stage_norm=rf"{_PREFIX}encoder\.layer_norm\.(\d)",
        head_proj=r"decode_head\.linear_c\.(\d)\.proj",
    ),
    _HFLayout(  # module names of transformers >= 5
        patch=rf"{_PREFIX}stages\.(\d)\.patch_embeddings",
        block=rf"{_PREFIX}stages\.(\d)\.blocks\.(\d+)",
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
        stage_norm=rf"{_PREFIX}stages\.(\d)\.layer_norm",
        head_proj=r"decode_head\.linear_projections\.(\d)\.proj",
    ),
]


# the ImageNet-1k classifier of `SegformerForImageClassification`, useless for segmentation
HF_BACKBONE_DROPPED = [rf"classifier\.{_PARAM}"]


def _layout_rules(layout: _HFLayout) -> list[RenameRule]:
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
    *(rule for layout in _LAYOUTS for rule in _layout_rules(layout)),
    RenameRule(r"decode_head\.linear_fuse\.weight", "decode_head.linear_fuse.conv.weight"),
    RenameRule(rf"decode_head\.batch_norm\.{_BN}", r"decode_head.linear_fuse.norm.\1"),
    RenameRule(rf"decode_head\.classifier\.{_PARAM}", r"decode_head.classifier.\1"),
]


def _merge_key_value(source: SourceKeys, target: TargetDict) -> None:
    """Separate key and value linears -> seglab's fused `attn.kv` (rows `[k; v]`)."""
    for layout in _LAYOUTS:
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
    _merge_key_value(source, target)
    apply_rename_table(source, target, HF_SEGFORMER_TABLE)
    return finish_segformer(source, target, model_name, variant, "Hugging Face", HF_OVERRIDES, backbone_only)
