"""ViT backbone checkpoints (timm / official Segmenter and SETR encoders, mmseg, JAX `.npz`) -> seglab keys.

Every function returns the backbone under seglab's `VisionTransformer` names WITHOUT a `backbone.` prefix
(`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`),
and fails naming every source key it did not understand. Keys deliberately left out are appended to the optional
`dropped` list.

Layouts:
- timm `VisionTransformer` (`vit_*_patch16_*`), and the encoders of the official Segmenter (rstrudel/segmenter, a timm
  copy) and SETR code: seglab's names already. The ImageNet classifier (`head.*`, `fc_norm.*`, `head_dist.*`) is
  dropped. A DeiT distillation token (`dist_token`) is dropped together with its position-embedding slot (index 1,
  after the cls slot): the resulting network has no distillation token, so its outputs differ from the distilled
  model's; it is a starting point for fine-tuning.
- mmseg `VisionTransformer` (`mmseg/models/backbones/vit.py`, 0.x and 1.x): `patch_embed.projection`,
  `layers.{i}.ln1/ln2`, `layers.{i}.attn.attn.in_proj_weight/in_proj_bias` (rows q, k, v, as seglab's fused `qkv`),
  `layers.{i}.attn.attn.out_proj`, `layers.{i}.ffn.layers.0.0` (fc1) and `ffn.layers.1` (fc2), and the final norm at
  top level as `ln1` (mmseg builds it with `build_norm_layer(..., postfix=1)`). With a `backbone.` prefix, the keys of
  a whole segmentor may be passed: `decode_head.*` / `auxiliary_head.*` are left to the head converters (ignored).
  `patch_norm=True` checkpoints (`patch_embed.norm`) are refused: seglab's patch embedding has no norm. NOTE: mmseg
  1.x builds `VisionTransformer` with `patch_bias=False` by default (0.x always had the bias, and the ImageNet files
  of `vit2mmseg.py` keep timm's), so models trained with 1.x have no `patch_embed.projection.bias`: the result then
  has no `patch_embed.proj.bias` and the model is built with `patch_bias=False` (`patch_bias_overrides`). mmseg 1.x
  loads a file that has the bias into its bias-free model with `strict=False`, silently dropping it; seglab keeps
  it, i.e. the network the weights were trained as.
- JAX / AugReg `.npz` (google-research/vision_transformer, as timm's `_load_weights` reads them): `embedding/kernel`
  (P, P, C_in, C: HWIO), `embedding/bias`, `cls` (1, 1, C), `Transformer/posembed_input/pos_embedding` (1, 1 + N, C),
  `Transformer/encoderblock_{i}/LayerNorm_0` (norm1) and `LayerNorm_2` (norm2) `scale|bias`,
  `MultiHeadDotProductAttention_1/{query,key,value}/kernel` (C, heads, d) and `bias` (heads, d), `.../out/kernel`
  (heads, d, C) and `bias`, `MlpBlock_3/Dense_0|Dense_1/kernel` (in, out) and `bias`, `Transformer/encoder_norm`; an
  `opt/target/` prefix is accepted; `head/*` and `pre_logits/*` are dropped. Big-vision layouts (`params/` prefix,
  `MultiHeadDotProductAttention_0`, scanned `encoderblock`) and hybrid (ResNet stem) models are refused.

The final LayerNorm: with `final_norm=True` (default) the source's final norm becomes `norm` (build the backbone with
`final_norm=True`); with `final_norm=False` it is dropped, for a backbone built without it.

ImageNet ViTs as backbone-only weights (`imagenet_vit_backbone`, used by the SETR, Segmenter and SegViT converters):
the source is converted by the layout's function, or by `convert_vit_jax_npz` whatever the source name when it holds
JAX arrays (recognised by an `embedding/kernel` key; `seglab.convert.common.read_source` reads a `.npz` file into
tensors under the array names), and its position embedding is resampled to the grid of the model it is for, with that
model's `interpolate_mode` (plain `F.interpolate`, `align_corners=False`, as mmseg's `resize_pos_embed`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from seglab.convert.common import ConversionResult, RenameRule, SourceKeys, TargetDict, apply_rename_table, finalize

_PARAM = r"(weight|bias)"
_BLOCK_PARTS = r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
_HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")

TIMM_TABLE = [
    RenameRule(rf"patch_embed\.proj\.{_PARAM}", r"patch_embed.proj.\1"),
    RenameRule(r"(cls_token|pos_embed)", r"\1"),
    RenameRule(rf"blocks\.(\d+)\.{_BLOCK_PARTS}\.{_PARAM}", r"blocks.\1.\2.\3"),
    RenameRule(rf"norm\.{_PARAM}", r"norm.\1"),
]
TIMM_DROPPED = r"(head|fc_norm|head_dist)\.(weight|bias)"  # the ImageNet classifier (and DeiT's distillation head)

MMSEG_TABLE = [
    RenameRule(rf"patch_embed\.projection\.{_PARAM}", r"patch_embed.proj.\1"),
    RenameRule(r"(cls_token|pos_embed)", r"\1"),
    RenameRule(rf"layers\.(\d+)\.ln([12])\.{_PARAM}", r"blocks.\1.norm\2.\3"),
    RenameRule(r"layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    RenameRule(rf"layers\.(\d+)\.attn\.attn\.out_proj\.{_PARAM}", r"blocks.\1.attn.proj.\2"),
    RenameRule(rf"layers\.(\d+)\.ffn\.layers\.0\.0\.{_PARAM}", r"blocks.\1.mlp.fc1.\2"),
    RenameRule(rf"layers\.(\d+)\.ffn\.layers\.1\.{_PARAM}", r"blocks.\1.mlp.fc2.\2"),
    RenameRule(rf"ln1\.{_PARAM}", r"norm.\1"),  # mmseg's final norm (top level `ln1`, not a block's)
]

JAX_BLOCK = "Transformer/encoderblock_{}/"
JAX_ATTN = "MultiHeadDotProductAttention_1/"
JAX_DROPPED = r"(head|pre_logits)/(kernel|bias)"


def convert_vit_timm(
    state_dict: Mapping[str, torch.Tensor], final_norm: bool = True, dropped: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """timm `vit_*` (or official Segmenter / SETR encoder) weights -> seglab `VisionTransformer` keys.

    Args:
        state_dict: a timm `VisionTransformer` state dict (`patch_embed.proj`, `cls_token`, `pos_embed`,
            `blocks.{i}.*`, `norm`, classifier keys).
        final_norm: keep the final `norm` (True) or drop it (for a backbone built with `final_norm=False`).
        dropped: if given, the deliberately dropped source keys are appended to it.

    Returns:
        Backbone tensors without a `backbone.` prefix.

    Raises:
        ValueError: naming every source key that is neither mapped nor a known dropped key, or naming the missing
            `pos_embed` / `cls_token`.
    """
    source = SourceKeys(state_dict, "timm ViT state dict")
    source.drop(TIMM_DROPPED)
    if not final_norm:
        source.drop(rf"norm\.{_PARAM}")
    target = TargetDict()
    if "dist_token" in source.tensors:
        source.drop("dist_token")
        # (1, 2 + N, C) -> (1, 1 + N, C): the distillation slot sits right after the cls slot
        pos = source.take("pos_embed")
        target.put("pos_embed", torch.cat([pos[:, :1], pos[:, 2:]], dim=1), "pos_embed")
    apply_rename_table(source, target, TIMM_TABLE)
    return _finish(source, target, dropped, "the ViT backbone (timm layout)")


def convert_vit_mmseg(
    state_dict: Mapping[str, torch.Tensor], final_norm: bool = True, dropped: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """mmseg `VisionTransformer` weights (with or without `backbone.`) -> seglab `VisionTransformer` keys.

    Args:
        state_dict: mmseg ViT backbone keys, or a whole mmseg segmentor state dict (`backbone.*` read,
            `decode_head.*` / `auxiliary_head.*` ignored).
        final_norm: keep the final `ln1` as `norm` (True; present only in `final_norm=True` mmseg models) or drop it.
        dropped: if given, the deliberately dropped source keys are appended to it.

    Returns:
        Backbone tensors without a `backbone.` prefix.

    Raises:
        ValueError: naming every source key that is neither mapped nor a known dropped key.
    """
    prefixed = any(k.startswith("backbone.") for k in state_dict)
    if prefixed:
        state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}
    source = SourceKeys(state_dict, "mmseg ViT state dict" + (" (`backbone.` prefix removed)" if prefixed else ""))
    if not final_norm:
        source.drop(rf"ln1\.{_PARAM}")
    target = TargetDict()
    apply_rename_table(source, target, MMSEG_TABLE)
    return _finish(source, target, dropped, "the ViT backbone (mmseg layout)")


def convert_vit_jax_npz(
    arrays: Mapping[str, np.ndarray | torch.Tensor], final_norm: bool = True, dropped: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """JAX / AugReg ViT `.npz` arrays (`dict(np.load(path))`, or `read_source`'s tensors) -> seglab `VisionTransformer`
    keys.

    Args:
        arrays: the checkpoint's arrays (numpy or torch) by name (see the module docstring for the layout), optionally
            under `opt/target/`.
        final_norm: keep `Transformer/encoder_norm` as `norm` (True) or drop it.
        dropped: if given, the deliberately dropped source keys are appended to it.

    Returns:
        Backbone tensors (float32 as stored) without a `backbone.` prefix.

    Raises:
        ValueError: naming the layout problem or every array the converter did not understand.
    """
    prefix = "opt/target/" if "opt/target/embedding/kernel" in arrays else ""
    if f"{prefix}embedding/kernel" not in arrays:
        raise ValueError(f"JAX ViT arrays: no `embedding/kernel` (or `opt/target/embedding/kernel`); is it a ViT "
                         f"`.npz`? First keys: {', '.join(list(arrays)[:8])}")
    if any(k.startswith(f"{prefix}Transformer/encoderblock/") for k in arrays) or "params/embedding/kernel" in arrays:
        raise ValueError("JAX ViT arrays: big-vision layout (scanned `Transformer/encoderblock/` or a `params/` "
                         "prefix); only the google-research/vision_transformer (AugReg) layout is supported")
    if any(k.startswith(f"{prefix}conv_root/") for k in arrays):
        raise ValueError("JAX ViT arrays: a hybrid (ResNet stem) ViT; only plain patch-embedding ViTs are supported")
    tensors = {k.removeprefix(prefix): v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
               for k, v in arrays.items()}
    source = SourceKeys(tensors, "JAX ViT .npz" + (" (`opt/target/` prefix removed)" if prefix else ""))
    source.drop(JAX_DROPPED)
    if not final_norm:
        source.drop(r"Transformer/encoder_norm/(scale|bias)")
    target = TargetDict()

    def put(key: str, name: str, value: torch.Tensor) -> None:
        target.put(key, value, name)

    kernel = _take(source, "embedding/kernel", 4)
    put("patch_embed.proj.weight", "embedding/kernel", kernel.permute(3, 2, 0, 1))  # HWIO -> OIHW
    put("patch_embed.proj.bias", "embedding/bias", _take(source, "embedding/bias", 1))
    put("cls_token", "cls", _take(source, "cls", 3))
    pos_key = "Transformer/posembed_input/pos_embedding"
    put("pos_embed", pos_key, _take(source, pos_key, 3))
    if "Transformer/encoder_norm/scale" in source.keys():
        put("norm.weight", "Transformer/encoder_norm/scale", _take(source, "Transformer/encoder_norm/scale", 1))
        put("norm.bias", "Transformer/encoder_norm/bias", _take(source, "Transformer/encoder_norm/bias", 1))

    depth = len({m[1] for k in source.keys() if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    for i in range(depth):
        block, ours = JAX_BLOCK.format(i), f"blocks.{i}."
        for jax_norm, our_norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            for jax_param, our_param in (("scale", "weight"), ("bias", "bias")):
                name = f"{block}{jax_norm}/{jax_param}"
                put(f"{ours}{our_norm}.{our_param}", name, _take(source, name, 1))
        attn = block + JAX_ATTN
        # (C, heads, d) kernels -> (heads * d, C) weight rows, stacked q, k, v as the fused `qkv`
        weights = [_take(source, f"{attn}{n}/kernel", 3).flatten(1).T for n in ("query", "key", "value")]
        biases = [_take(source, f"{attn}{n}/bias", 2).flatten() for n in ("query", "key", "value")]
        put(f"{ours}attn.qkv.weight", f"{attn}query|key|value/kernel", torch.cat(weights, dim=0))
        put(f"{ours}attn.qkv.bias", f"{attn}query|key|value/bias", torch.cat(biases, dim=0))
        out = _take(source, f"{attn}out/kernel", 3)
        put(f"{ours}attn.proj.weight", f"{attn}out/kernel", out.flatten(0, 1).T)  # (heads, d, C) -> (C, heads * d)
        put(f"{ours}attn.proj.bias", f"{attn}out/bias", _take(source, f"{attn}out/bias", 1))
        for r in (0, 1):
            dense = f"{block}MlpBlock_3/Dense_{r}/"
            put(f"{ours}mlp.fc{r + 1}.weight", f"{dense}kernel", _take(source, f"{dense}kernel", 2).T)  # (in, out)
            put(f"{ours}mlp.fc{r + 1}.bias", f"{dense}bias", _take(source, f"{dense}bias", 1))
    return _finish(source, target, dropped, "the ViT backbone (JAX .npz layout)")


def patch_bias_overrides(backbone: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, Any]:
    """`{"patch_bias": False}` when converted ViT weights (keys under `prefix`) have a patch-embedding conv without a
    bias (an mmseg 1.x ViT), else `{}` (the models' default)."""
    return {} if f"{prefix}patch_embed.proj.bias" in backbone else {"patch_bias": False}


def is_jax_vit(state_dict: Mapping[str, object]) -> bool:
    """Whether a source holds JAX ViT arrays (`embedding/kernel`, under any prefix) rather than PyTorch keys."""
    return any(key.endswith("embedding/kernel") for key in state_dict)


def imagenet_vit_backbone(
    source: SourceKeys, convert_vit: Callable[..., dict[str, torch.Tensor]], model_name: str,
    overrides: Mapping[str, Any], final_norm: bool,
) -> ConversionResult:
    """An ImageNet ViT (every remaining key of `source`, optionally under `backbone.`) as the backbone-only weights of
    `create_model(model_name, **overrides)`, its position embedding resampled to that model's grid.

    Args:
        source: the checkpoint's keys; its `origin` names the file in errors.
        convert_vit: the layout's converter (`convert_vit_timm` / `convert_vit_mmseg`); JAX arrays (`is_jax_vit`) go
            through `convert_vit_jax_npz` instead.
        model_name: the seglab model the weights are for.
        overrides: its constructor options (e.g. `img_size`, which sets the grid); returned as the result's overrides,
            with `patch_bias=False` added for a source without a patch-embedding bias (an mmseg 1.x ViT).
        final_norm: whether the model's backbone has a final norm (kept) or not (the source's is dropped).

    Returns:
        A backbone-only `ConversionResult` (the ImageNet classifier among `dropped`).
    """
    from seglab.backbones.vit import resample_pos_embed
    from seglab.registry import create_model

    state = {key.removeprefix("backbone."): source.take(key) for key in source.keys()}
    if is_jax_vit(state):
        convert_vit = convert_vit_jax_npz
    dropped: list[str] = []
    try:
        backbone = convert_vit(state, final_norm=final_norm, dropped=dropped)
    except ValueError as exc:  # the layout converters name the layout, not the file
        raise ValueError(f"{source.origin}: {exc}") from exc
    source.dropped.extend(dropped)
    overrides = {**overrides, **patch_bias_overrides(backbone)}
    with torch.device("meta"):
        model = create_model(model_name, **overrides)
    grid, mode = tuple(model.backbone.grid_size), model.backbone.interpolate_mode
    pos = backbone["pos_embed"]
    side = math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1:
        raise ValueError(f"{source.origin}: the position embedding {tuple(pos.shape)} holds {pos.shape[1] - 1} patch "
                         f"positions, not a square grid")
    if (side, side) != grid:
        backbone["pos_embed"] = resample_pos_embed(pos, (side, side), grid, mode)
    target = TargetDict()
    layout = "JAX .npz" if convert_vit is convert_vit_jax_npz else convert_vit.__name__.removeprefix("convert_vit_")
    for key, value in backbone.items():
        target.put(f"backbone.{key}", value, f"{key} ({layout} ViT, via seglab.convert.vit)")
    return finalize(source, target, model_name, None, dict(overrides), backbone_only=True)


def _take(source: SourceKeys, key: str, ndim: int) -> torch.Tensor:
    """`source.take(key)`, checking the number of dimensions of the JAX layout."""
    value = source.take(key)
    if value.ndim != ndim:
        raise ValueError(f"{source.origin}: {key!r} has shape {tuple(value.shape)}, expected {ndim} dimensions")
    return value


def _finish(
    source: SourceKeys, target: TargetDict, dropped: list[str] | None, context: str
) -> dict[str, torch.Tensor]:
    source.check_consumed(context)
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in target.tensors:
            raise ValueError(f"{source.origin}: no source key maps to {key!r}; is it a plain ViT with a class token?")
    pos, cls = target.tensors["pos_embed"], target.tensors["cls_token"]
    if pos.ndim != 3 or pos.shape[0] != 1 or cls.shape != (1, 1, pos.shape[-1]):
        raise ValueError(f"{source.origin}: pos_embed {tuple(pos.shape)} (from {target.origin['pos_embed']!r}) and "
                         f"cls_token {tuple(cls.shape)} are not (1, 1 + N, C) and (1, 1, C)")
    if dropped is not None:
        dropped.extend(source.dropped)
    return dict(target.tensors)
