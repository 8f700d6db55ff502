"""Swin Transformer backbone checkpoints (timm, official segmentation / mmseg, Hugging Face) -> seglab keys.

Every function returns the backbone under seglab's names with the `backbone.` prefix (`backbone.patch_embed.proj`,
`backbone.stages.{i}.blocks.{j}.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}`,
`backbone.stages.{i}.downsample.{norm,reduction}`, `backbone.out_norms.{i}`), and fails naming every source key it did
not understand. Buffers derived from the window size (`relative_position_index`, `attn_mask`) are dropped.

Layouts:
- timm `SwinTransformer` (`layers.{i}`, or `layers_{i}` in a `features_only` model): patch merging sits at the START
  of stages 1-3 (`layers.{i}.downsample`), so it moves to the end of stage i - 1; `layers.{i}.blocks.{j}.mlp.fc{1,2}`
  keep their names. timm has no per-stage output norms; its final `norm` and the ImageNet `head` belong to the
  classifier and are dropped, so the result lacks `backbone.out_norms.*` (they start from their initialisation, as
  when a segmentation model is built on an ImageNet checkpoint).
- Official Swin-Transformer-Semantic-Segmentation, built on mmseg 0.11 (`backbone.layers.{i}.blocks.{j}.attn.*`,
  `mlp.fc{1,2}`, `backbone.layers.{i}.downsample.{reduction,norm}` at the end of stage i, `backbone.norm{i}`).
- Hugging Face transformers (`SwinBackbone`, or the `backbone.` part of `UperNetForSemanticSegmentation`): 5.x names
  (`swin.encoder.layers.{i}.blocks.{j}.attention.{q,k,v,o}_proj`, `attention.relative_position_bias.*`, `mlp.fc{1,2}`)
  and the 4.x / Hub names (`encoder.layers.{i}.blocks.{j}.attention.self.{query,key,value}`, `attention.output.dense`,
  `intermediate.dense`, `output.dense`); separate q/k/v are fused into `qkv`; `hidden_states_norms.stage{i+1}` are the
  output norms and the unused final `layernorm` is dropped.
- mmseg's own Swin (`mmseg/models/backbones/swin.py`, in the later 0.x releases and 1.x; called "mmseg 1.x" here)
  (`backbone.stages.{i}.blocks.{j}.attn.w_msa.*`, `ffn.layers.0.0` / `ffn.layers.1`,
  `backbone.patch_embed.projection`, `backbone.stages.{i}.downsample.{norm,reduction}` at the end of stage i,
  `backbone.norm{i}`).

Whole segmentor checkpoints may be passed: only `backbone.*` keys are read (`decode_head.*` / `auxiliary_head.*` are
left to the head converters). Patch merging concatenates the 2x2 neighbours in the same order in timm, the official
code and seglab; mmseg 1.x merges with `nn.Unfold` (channel-major), so its merging norm and reduction weight are
reordered back (`unfold_to_concat_order`, the inverse of mmseg's `swin2mmseg` correction).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from seglab.convert.common import (
    ConversionResult,
    RenameRule,
    SourceKeys,
    TargetDict,
    apply_rename_table,
    expected_state,
    finalize,
)

_PARAM = r"(weight|bias)"
_BLOCK_PARTS = r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
_HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")

TIMM_TABLE = [
    RenameRule(rf"patch_embed\.(proj|norm)\.{_PARAM}", r"backbone.patch_embed.\1.\2"),
    RenameRule(rf"layers[._](\d+)\.blocks\.(\d+)\.{_BLOCK_PARTS}\.{_PARAM}", r"backbone.stages.\1.blocks.\2.\3.\4"),
    RenameRule(r"layers[._](\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
               r"backbone.stages.\1.blocks.\2.attn.relative_position_bias_table"),
    # merging at the start of timm's stage i is the end of seglab's stage i - 1
    RenameRule(rf"layers[._](\d+)\.downsample\.(norm\.{_PARAM}|reduction\.weight)",
               lambda m: f"backbone.stages.{int(m[1]) - 1}.downsample.{m[2]}"),
]
TIMM_DROPPED = r"(head\..*|norm\.(weight|bias)|.*\.relative_position_index|.*\.attn_mask)"

OFFICIAL_TABLE = [
    RenameRule(rf"backbone\.patch_embed\.(proj|norm)\.{_PARAM}", r"backbone.patch_embed.\1.\2"),
    RenameRule(rf"backbone\.layers\.(\d+)\.blocks\.(\d+)\.{_BLOCK_PARTS}\.{_PARAM}",
               r"backbone.stages.\1.blocks.\2.\3.\4"),
    RenameRule(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
               r"backbone.stages.\1.blocks.\2.attn.relative_position_bias_table"),
    RenameRule(rf"backbone\.layers\.(\d+)\.downsample\.(norm\.{_PARAM}|reduction\.weight)",
               r"backbone.stages.\1.downsample.\2"),
    RenameRule(rf"backbone\.norm(\d+)\.{_PARAM}", r"backbone.out_norms.\1.\2"),
]
# `absolute_pos_embed` exists only with ape=True, which no segmentation config uses; it is refused, not dropped
OFFICIAL_DROPPED = r"backbone\..*\.(relative_position_index|attn_mask)"

# mmseg 1.x block children -> seglab's
MMSEG_BLOCK_PARTS = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.w_msa.qkv": "attn.qkv",
    "attn.w_msa.proj": "attn.proj",
    "ffn.layers.0.0": "mlp.fc1",
    "ffn.layers.1": "mlp.fc2",
}
MMSEG_TABLE = [
    RenameRule(rf"backbone\.patch_embed\.projection\.{_PARAM}", r"backbone.patch_embed.proj.\1"),
    RenameRule(rf"backbone\.patch_embed\.norm\.{_PARAM}", r"backbone.patch_embed.norm.\1"),
    RenameRule(
        rf"backbone\.stages\.(\d+)\.blocks\.(\d+)\.({'|'.join(re.escape(p) for p in MMSEG_BLOCK_PARTS)})\.{_PARAM}",
        lambda m: f"backbone.stages.{m[1]}.blocks.{m[2]}.{MMSEG_BLOCK_PARTS[m[3]]}.{m[4]}",
    ),
    RenameRule(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.relative_position_bias_table",
               r"backbone.stages.\1.blocks.\2.attn.relative_position_bias_table"),
    RenameRule(rf"backbone\.stages\.(\d+)\.downsample\.norm\.{_PARAM}", r"backbone.stages.\1.downsample.norm.\2",
               transform=lambda t: unfold_to_concat_order(t, dim=0)),
    RenameRule(r"backbone\.stages\.(\d+)\.downsample\.reduction\.weight",
               r"backbone.stages.\1.downsample.reduction.weight", transform=lambda t: unfold_to_concat_order(t, dim=1)),
    RenameRule(rf"backbone\.norm(\d+)\.{_PARAM}", r"backbone.out_norms.\1.\2"),
]
MMSEG_DROPPED = r"backbone\..*\.(relative_position_index|attn_mask)"


def unfold_to_concat_order(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Reorders the 4C patch-merging channels of mmseg 1.x (`nn.Unfold`: channel-major, then kernel position
    (0,0), (0,1), (1,0), (1,1)) into the original concatenation order (position-major: (0,0), (1,0), (0,1), (1,1)).

    Args:
        tensor: the merging LayerNorm's weight/bias (dim 0) or the reduction weight (dim 1), 4C long along `dim`.
        dim: the 4C dimension.
    """
    if tensor.shape[dim] % 4:
        raise ValueError(f"patch-merging tensor of shape {tuple(tensor.shape)}: dim {dim} is not a multiple of 4")
    channels = tensor.shape[dim] // 4
    moved = tensor.movedim(dim, -1)
    # unfold position (row, col) -> concatenation block: (0,0)->0, (0,1)->2, (1,0)->1, (1,1)->3, and back
    split = moved.reshape(*moved.shape[:-1], channels, 4)[..., [0, 2, 1, 3]]  # (..., C, 4 unfold positions)
    return split.transpose(-1, -2).reshape(moved.shape).movedim(-1, dim).contiguous()  # (..., 4 blocks, C)


def _convert(state_dict: Mapping[str, torch.Tensor], table: list[RenameRule], dropped: str, layout: str,
             backbone_prefixed: bool) -> dict[str, torch.Tensor]:
    if backbone_prefixed:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}
    source = SourceKeys(state_dict, origin=f"{layout} Swin state dict")
    source.drop(dropped)
    target = TargetDict()
    apply_rename_table(source, target, table)
    source.check_consumed(f"the Swin backbone ({layout} layout)")
    if not target.tensors:
        raise ValueError(f"{layout} Swin state dict: no backbone key found (expected e.g. "
                         f"{'patch_embed.proj.weight' if not backbone_prefixed else 'backbone.patch_embed.*'})")
    return target.tensors


_HF_PREFIX = r"(?:backbone\.)?(?:swin\.)?"
_HF_BLOCK = rf"{_HF_PREFIX}encoder\.layers\.(\d+)\.blocks\.(\d+)"
# HF block children -> seglab's (5.x spellings, then 4.x)
HF_BLOCK_PARTS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
HF_TABLE = [
    RenameRule(rf"{_HF_PREFIX}embeddings\.patch_embeddings\.projection\.{_PARAM}", r"backbone.patch_embed.proj.\1"),
    RenameRule(rf"{_HF_PREFIX}embeddings\.norm\.{_PARAM}", r"backbone.patch_embed.norm.\1"),
    RenameRule(rf"{_HF_BLOCK}\.({'|'.join(re.escape(p) for p in HF_BLOCK_PARTS)})\.{_PARAM}",
               lambda m: f"backbone.stages.{m[1]}.blocks.{m[2]}.{HF_BLOCK_PARTS[m[3]]}.{m[4]}"),
    RenameRule(rf"{_HF_BLOCK}\.attention\.(?:relative_position_bias|self)\.relative_position_bias_table",
               r"backbone.stages.\1.blocks.\2.attn.relative_position_bias_table"),
    RenameRule(rf"{_HF_PREFIX}encoder\.layers\.(\d+)\.downsample\.(norm\.{_PARAM}|reduction\.weight)",
               r"backbone.stages.\1.downsample.\2"),
    RenameRule(rf"{_HF_PREFIX}hidden_states_norms\.stage(\d+)\.{_PARAM}",
               lambda m: f"backbone.out_norms.{int(m[1]) - 1}.{m[2]}"),
]
HF_DROPPED = rf"({_HF_PREFIX}layernorm\.(weight|bias)|.*\.relative_position_index)"
# q, k, v projections of one block (5.x `q_proj`, 4.x `self.query`), fused in this order into `attn.qkv`
HF_QKV = rf"{_HF_BLOCK}\.attention\.(q_proj|k_proj|v_proj|self\.query|self\.key|self\.value)\.{_PARAM}"


def convert_swin_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face transformers Swin backbone weights -> seglab `backbone.*` keys.

    Args:
        state_dict: a `SwinBackbone` state dict, or an `UperNetForSemanticSegmentation` one (only its `backbone.*`
            keys are read), in the transformers 5.x or 4.x / Hub spelling.

    Returns:
        The backbone tensors under seglab's names, q/k/v fused into `attn.qkv` and `hidden_states_norms.stage{i+1}`
        as `out_norms.{i}`.

    Raises:
        ValueError: a backbone key is neither mapped nor a known dropped one, or a block lacks one of q/k/v.
    """
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k: v for k, v in state_dict.items() if k.startswith("backbone.")}
    source = SourceKeys(state_dict, origin="Hugging Face Swin state dict")
    source.drop(HF_DROPPED)
    target = TargetDict()
    groups: dict[tuple[str, str, str], dict[str, str]] = {}
    for key in source.keys():
        match = re.fullmatch(HF_QKV, key)
        if match:
            part = match[3].removeprefix("self.")[0]  # q / k / v
            groups.setdefault((match[1], match[2], match[4]), {})[part] = key
    for (stage, block, param), parts in groups.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"Hugging Face Swin state dict: block {stage}.{block} has {param} for "
                             f"{sorted(parts)} of q/k/v only")
        fused = torch.cat([source.take(parts[p]) for p in "qkv"], dim=0)
        target.put(f"backbone.stages.{stage}.blocks.{block}.attn.qkv.{param}", fused, parts["q"])
    apply_rename_table(source, target, HF_TABLE)
    source.check_consumed("the Swin backbone (Hugging Face layout)")
    if not target.tensors:
        raise ValueError("Hugging Face Swin state dict: no backbone key found (expected e.g. "
                         "`embeddings.patch_embeddings.projection.weight`)")
    return target.tensors


def convert_swin_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm `swin_*` weights (whole classifier or `features_only`) -> seglab `backbone.*` keys.

    Args:
        state_dict: a timm `SwinTransformer` state dict (`layers.{i}.*`) or that of its `features_only` wrapper
            (`layers_{i}.*`).

    Returns:
        The backbone tensors under seglab's names; `backbone.out_norms.*` are absent (timm has no per-stage output
        norms; its final `norm` and `head` are dropped with the buffers).

    Raises:
        ValueError: a source key is neither mapped nor a known dropped key, or no backbone key is present.
    """
    if any(k.startswith("layers.0.downsample.") for k in state_dict):
        raise ValueError("this state dict merges patches at the end of stage 0 (`layers.0.downsample`): it is the "
                         "official Swin layout, not timm's (merging at the start of stages 1-3); use "
                         "convert_swin_official")
    return _convert(state_dict, TIMM_TABLE, TIMM_DROPPED, "timm", backbone_prefixed=False)


def convert_swin_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Swin-Transformer-Semantic-Segmentation / mmseg 0.x or mmseg 1.x backbone -> seglab `backbone.*`.

    The layout is recognised from the keys: `backbone.layers.*` is the official / mmseg 0.x one, `backbone.stages.*`
    with `attn.w_msa` the mmseg 1.x one. `decode_head.*` and `auxiliary_head.*` keys are ignored. The official
    ImageNet checkpoints (`swin_tiny_patch4_window7_224.pth`, what the segmentation recipes start from) have the same
    backbone names without the prefix, merging at the end of stages 0-2 (`layers.0.downsample`), a classifier `norm`
    and `head`, and `attn_mask` buffers: they convert as well, the classifier dropped and no `out_norms` produced.

    Args:
        state_dict: a segmentor state dict (or its backbone part) with `backbone.`-prefixed keys, or an official
            ImageNet classification state dict.

    Returns:
        The backbone tensors under seglab's names, the per-stage `backbone.norm{i}` as `backbone.out_norms.{i}`.

    Raises:
        ValueError: the layout is not recognised, or a backbone key is neither mapped nor a known buffer.
    """
    if not any(k.startswith("backbone.") for k in state_dict) and any(k.startswith("layers.0.downsample.")
                                                                      for k in state_dict):
        # the official classification checkpoint: its classifier norm/head have no place in a segmentation backbone
        state_dict = {f"backbone.{k}": v for k, v in state_dict.items() if not re.match(r"(norm|head)\.", k)}
    keys = [k for k in state_dict if k.startswith("backbone.")]
    if any(k.startswith("backbone.layers.") for k in keys):
        return _convert(state_dict, OFFICIAL_TABLE, OFFICIAL_DROPPED, "official/mmseg 0.x", backbone_prefixed=True)
    if any(".attn.w_msa." in k for k in keys):
        return _convert(state_dict, MMSEG_TABLE, MMSEG_DROPPED, "mmseg 1.x", backbone_prefixed=True)
    raise ValueError("not a Swin segmentation checkpoint: expected `backbone.layers.{i}.blocks.*` (official / mmseg "
                     "0.x) or `backbone.stages.{i}.blocks.{j}.attn.w_msa.*` (mmseg 1.x) keys; "
                     f"first keys: {', '.join(list(state_dict)[:5])}")


def is_swin_imagenet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether `state_dict` is a Swin ImageNet classifier: official (`layers.0.downsample`, merging at the end of
    stages 0-2) or timm (`layers.1.downsample`, merging at the start of stages 1-3), without a `backbone.` prefix."""
    return any(re.match(r"layers\.[01]\.downsample\.", k) for k in state_dict)


def window_of(tensors: Mapping[str, torch.Tensor]) -> int | None:
    """The attention window the first relative-position bias table ((2w - 1)^2, heads) is for, or None."""
    table = next((v for k, v in tensors.items() if k.endswith("relative_position_bias_table")), None)
    return None if table is None else (round(table.shape[0] ** 0.5) + 1) // 2


def convert_swin_imagenet(
    state_dict: Mapping[str, torch.Tensor], model_name: str, origin: str, default_window: int
) -> ConversionResult:
    """An ImageNet Swin classifier as the backbone-only weights of `model_name` (a recipe's `model.pretrained`).

    Takes the official checkpoints (`swin_tiny_patch4_window7_224.pth`, ..., what the segmentation recipes start
    from) and timm's `swin_*` (the same weights, patch merging at the start of the next stage). The classifier's
    `norm` and `head` are dropped; the per-stage output norms, new layers of the segmentation model, get LayerNorm's
    initialisation (weight 1, bias 0), as mmseg and the official segmentation code initialise them.

    Args:
        state_dict: the classifier's tensors.
        model_name: a model with a Swin backbone (`upernet_swin_*`, `maskformer_swin_*`).
        origin: the file name, for error messages.
        default_window: the model's default window; another window in the file becomes the `window_size` override.
    """
    source = SourceKeys(state_dict, origin)
    timm = not any(k.startswith("layers.0.downsample.") for k in state_dict)  # official: merging ends stages 0-2
    try:
        converted = convert_swin_timm(state_dict) if timm else convert_swin_official(state_dict)
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from exc
    source.consumed.update(state_dict)
    source.dropped.extend(k for k in state_dict if re.match(r"(norm|head)\.", k) or
                          k.endswith((".relative_position_index", ".attn_mask")))
    target = TargetDict()
    for key, value in converted.items():
        target.put(key, value, f"Swin ImageNet checkpoint ({'timm' if timm else 'official'} layout)")
    window = window_of(target.tensors)
    overrides = {} if window in (None, default_window) else {"window_size": window}
    for key, value in expected_state(model_name, None, overrides, backbone_only=True).items():
        if key.startswith("backbone.out_norms.") and key not in target.tensors:
            fill = torch.ones if key.endswith(".weight") else torch.zeros
            target.put(key, fill(value.shape), "LayerNorm initialisation (not in an ImageNet checkpoint)")
    source.check_consumed(f"the backbone of {model_name} (ImageNet Swin)")
    return finalize(source, target, model_name, None, overrides, backbone_only=True)


__all__ = ["convert_swin_hf", "convert_swin_imagenet", "convert_swin_official", "convert_swin_timm",
           "is_swin_imagenet", "unfold_to_concat_order", "window_of"]
