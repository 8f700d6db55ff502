"""Official SegViT checkpoints (zbwxp/SegVit, mmseg 0.24) -> seglab `segvit_*` models.

Layout of the released files (`state_dict` of an mmseg `EncoderDecoder`):
- `backbone.*`: mmseg `VisionTransformer` (or SegViT's `vit_shrink`, the same names): `patch_embed.projection`,
  `cls_token`, `pos_embed` (1, 1 + (img_size / 16)^2, C), `layers.{i}.ln1/ln2`, `layers.{i}.attn.attn.in_proj_*`,
  `.attn.attn.out_proj`, `.ffn.layers.0.0` / `.ffn.layers.1`; no final norm (`final_norm=False` in every config).
  Converted by `seglab.convert.vit.convert_vit_mmseg`.
- `decode_head.*` of `ATMHead`: `q.weight` (K, D), `input_proj_{i}`, `proj_norm_{i}`, `decoder_{i}.layers.{j}.`
  (`self_attn.in_proj_weight/in_proj_bias/out_proj.*`, `multihead_attn.{q,k,v,proj}.*`, `linear1/2`, `norm1/2/3`),
  `class_embed` (K + 1, D); of `TPNATMHead`: `q.weight` ((img_size / 16)^2, D), `input_proj_{i}`, `proj_norm_{i}`,
  `decoder_{i}.layers.{j}.` (a standard `nn.TransformerDecoderLayer`: `multihead_attn.in_proj_*` / `out_proj.*`) and
  the inner `ATMSingleHead` under `atm.` (`atm.q`, `atm.decoder_1.layers.{j}.*`, `atm.class_embed`). seglab uses
  these names, so the head maps one to one.
- `decode_head.loss_decode.criterion.empty_weight`: the loss's class weights (a buffer of the training criterion),
  dropped; Shrunk checkpoints also hold `decode_head.atm.loss_decode.criterion.empty_weight` (the inner
  `ATMSingleHead` is built with `TPNATMHead`'s keyword arguments, `loss_decode` included), dropped too.

`num_classes` is read from `class_embed`, and the training crop (`img_size`) from the position embedding's grid;
a crop other than the variant's default becomes an `img_size` override (e.g. 512 for the COCO-Stuff-10k ViT-L models,
480 for Pascal Context).

A source without `decode_head.*` keys is an ImageNet ViT and converts to backbone-only weights for a recipe's
`model.pretrained` (`seglab.convert.vit.imagenet_vit_backbone`): the mmseg layout that the SegViT configs load
(`vit_large_p16_384_20220308-d4efb41d.pth`, `vit_base_p16_384_20220308-96dfe169.pth`: `patch_embed.projection`,
`layers.{i}.ln1`, ...), the timm layout they were converted from (`jx_vit_large_p16_384`, `vit_base_patch16_384`), or
a JAX / AugReg `.npz`. The final norm and the classifier are dropped (SegViT backbones have none) and the position
embedding is resampled bicubically to the model's grid (`img_size // 16`): SegViT builds mmseg's `VisionTransformer`
with `interpolate_mode='bicubic'`, which `init_weights` passes to `resize_pos_embed` when it loads the pretrained file.
`img_size` picks the grid (512 for COCO-Stuff-10k, 480 for Pascal Context; default the variant's crop) and is returned
as an override.
"""

from __future__ import annotations

import math
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
)
from seglab.convert.vit import convert_vit_mmseg, convert_vit_timm, imagenet_vit_backbone

_PARAM = r"(weight|bias)"
_ATM_LAYER = (r"(self_attn\.in_proj_weight|self_attn\.in_proj_bias|self_attn\.out_proj\.(?:weight|bias)"
              r"|multihead_attn\.(?:q|k|v|proj)\.(?:weight|bias)|(?:linear[12]|norm[123])\.(?:weight|bias))")
_TORCH_LAYER = (r"((?:self_attn|multihead_attn)\.(?:in_proj_weight|in_proj_bias|out_proj\.(?:weight|bias))"
                r"|(?:linear[12]|norm[123])\.(?:weight|bias))")

ATM_HEAD_TABLE = [
    RenameRule(r"decode_head\.q\.weight", r"decode_head.q.weight"),
    RenameRule(rf"decode_head\.(input_proj|proj_norm)_(\d+)\.{_PARAM}", r"decode_head.\1_\2.\3"),
    RenameRule(rf"decode_head\.decoder_(\d+)\.layers\.(\d+)\.{_ATM_LAYER}", r"decode_head.decoder_\1.layers.\2.\3"),
    RenameRule(rf"decode_head\.class_embed\.{_PARAM}", r"decode_head.class_embed.\1"),
]
TPN_HEAD_TABLE = [
    RenameRule(r"decode_head\.q\.weight", r"decode_head.q.weight"),
    RenameRule(rf"decode_head\.(input_proj|proj_norm)_(\d+)\.{_PARAM}", r"decode_head.\1_\2.\3"),
    RenameRule(rf"decode_head\.decoder_(\d+)\.layers\.(\d+)\.{_TORCH_LAYER}", r"decode_head.decoder_\1.layers.\2.\3"),
    RenameRule(r"decode_head\.atm\.q\.weight", r"decode_head.atm.q.weight"),
    RenameRule(rf"decode_head\.atm\.decoder_1\.layers\.(\d+)\.{_ATM_LAYER}", r"decode_head.atm.decoder_1.layers.\1.\2"),
    RenameRule(rf"decode_head\.atm\.class_embed\.{_PARAM}", r"decode_head.atm.class_embed.\1"),
]
# ATMLoss's class weights, not part of the network; `atm.` is the inner ATMSingleHead of TPNATMHead (Shrunk)
DROPPED = [r"decode_head\.(?:atm\.)?loss_decode\.criterion\.empty_weight"]


def segvit_variant(model_name: str) -> str:
    """`segvit_vit_l` -> `vit_l`; any other model name is refused with the list of supported ones."""
    from seglab.models.segvit import SEGVIT_VARIANTS

    return model_variant(model_name, "segvit_", SEGVIT_VARIANTS, "SegViT", "official")


def convert_segvit_official(
    state_dict: Mapping[str, torch.Tensor], model_name: str, origin: str = "state dict",
    overrides: Mapping[str, Any] | None = None, img_size: int | None = None,
) -> ConversionResult:
    """Converts an official SegViT checkpoint (mmseg ViT backbone + `ATMHead` or `TPNATMHead`), or an ImageNet ViT
    (mmseg, timm or JAX layout; no `decode_head.*` key) as backbone-only weights.

    Args:
        state_dict: the checkpoint's tensors (`backbone.*`, `decode_head.*`), or an ImageNet ViT's.
        model_name: `segvit_vit_b`, `segvit_vit_l` or `segvit_shrunk_vit_l` (Shrunk: `vit_shrink` + `TPNATMHead`).
        origin: the file name, for error messages.
        overrides: model options the keys cannot tell (e.g. `vit` and `out_indices` of a reduced model); they win
            over the inferred ones.
        img_size: for an ImageNet ViT, the crop to resample the position embedding for (default the variant's),
            returned as the `img_size` override; a whole SegViT checkpoint keeps its grid and refuses another.

    Returns:
        seglab keys, `num_classes` read from `class_embed`, and an `img_size` override when the checkpoint's
        position-embedding grid is not the variant's default crop; or the backbone-only weights.

    Raises:
        ValueError: naming unknown keys, a final backbone norm (no SegViT config has one), or keys and shapes that do
            not fit `model_name`.
    """
    from seglab.backbones.vit import VIT_CONFIGS
    from seglab.models.segvit import SEGVIT_VARIANTS

    spec = SEGVIT_VARIANTS[segvit_variant(model_name)]
    source = SourceKeys(state_dict, origin)
    if not has_decode_head(state_dict):
        mmseg = any(k.removeprefix("backbone.").startswith(("patch_embed.projection.", "layers.")) for k in state_dict)
        options = {**(overrides or {}), **({} if img_size is None else {"img_size": img_size})}
        return imagenet_vit_backbone(source, convert_vit_mmseg if mmseg else convert_vit_timm, model_name, options,
                                     final_norm=False)
    for pattern in DROPPED:
        source.drop(pattern)
    if any(k.startswith("backbone.ln1.") for k in source.keys()):
        raise ValueError(f"{origin}: the backbone has a final norm (`backbone.ln1.*`), but SegViT models are built "
                         f"without one (final_norm=False); is it a SegViT checkpoint?")
    backbone_keys = [k for k in source.keys() if k.startswith("backbone.")]
    if not backbone_keys:
        raise ValueError(f"{origin}: no `backbone.*` key; expected a whole SegViT (mmseg EncoderDecoder) state dict")
    dropped: list[str] = []
    backbone = convert_vit_mmseg({k: source.take(k) for k in backbone_keys}, final_norm=False, dropped=dropped)
    target = TargetDict()
    for key, value in backbone.items():
        target.put(f"backbone.{key}", value, "backbone (mmseg ViT layout)")
    apply_rename_table(source, target, ATM_HEAD_TABLE if spec.shrink_index is None else TPN_HEAD_TABLE)
    source.check_consumed(f"{model_name} (official SegViT layout)")

    classifier = "decode_head.class_embed.weight" if spec.shrink_index is None else "decode_head.atm.class_embed.weight"
    if classifier not in target.tensors:
        head = "ATMHead" if spec.shrink_index is None else "TPNATMHead (Shrunk)"
        raise ValueError(f"{origin}: no `{classifier}`; {model_name} needs an {head} checkpoint")
    num_classes = int(target.tensors[classifier].shape[0]) - 1
    tokens = target.tensors["backbone.pos_embed"].shape[1] - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"{origin}: backbone.pos_embed holds {tokens} patch positions, not a square grid; SegViT "
                         f"trains on square crops")
    trained = grid * VIT_CONFIGS[spec.backbone].patch_size
    if img_size is not None and img_size != trained:
        raise ValueError(f"{origin}: its position embedding is trained for img_size {trained}; a whole SegViT "
                         f"checkpoint keeps its grid (img_size {img_size} is for backbone-only sources)")
    inferred = {} if trained == spec.img_size else {"img_size": trained}
    result = finalize(source, target, model_name, num_classes, {**inferred, **(overrides or {})})
    result.dropped.extend(dropped)
    return result
