"""MaskFormer checkpoints -> seglab: Hugging Face transformers and the official detectron2 code.

seglab names (`seglab.heads.maskformer`): `decode_head.pixel_decoder.{lateral_convs.{i},output_convs.{i}}.{conv,norm}`
(i = backbone stage, shallow to deep; the deepest stage has an output conv only), `decode_head.pixel_decoder.
mask_features`, `decode_head.predictor.{query_embed,input_proj,class_embed,mask_embed.layers.{j}}`,
`decode_head.predictor.decoder.layers.{i}.{self_attn,cross_attn}.{q,k,v,out}_proj`, `.norm{1,2,3}`, `.ffn.fc{1,2}`,
`decode_head.predictor.decoder.norm`.

Layouts:
- transformers `MaskFormerForInstanceSegmentation` (5.x and 4.x spellings): `model.pixel_level_module.decoder.fpn.stem`
  (deepest output conv), `fpn.layers.{j}.{proj,block}` (j counts from the deepest lateral: stage n - 2 - j),
  `decoder.mask_projection`, `model.transformer_module.{queries_embedder,input_projection}`,
  `transformer_module.decoder.layers.{i}.{self_attn,encoder_attn}.{q,k,v,o|out}_proj`, `*_layer_norm`,
  `{mlp.}fc{1,2}`, `decoder.layernorm`, `class_predictor`, `mask_embedder.{j}.0`; the loss buffer
  `criterion.empty_weight` is dropped. Backbones: `MaskFormerSwin` (`pixel_level_module.encoder.model.*`, mapped by
  `seglab.convert.swin.convert_swin_hf`, with `encoder.hidden_states_norms.{i}` as the output norms) or transformers'
  ResNet (`encoder.embedder.embedder`, `encoder.encoder.stages.{s}.layers.{l}.{shortcut,layer.{j}}` ->
  torchvision's `conv1`/`bn1`, `layer{s+1}.{l}.{downsample.{0,1},conv{j+1},bn{j+1}}`).
- official facebookresearch/MaskFormer (detectron2): `sem_seg_head.pixel_decoder.{adapter_k,layer_k}` (k = stage + 1,
  conv weight at the top, its GroupNorm as `.norm`), `pixel_decoder.mask_features`, `sem_seg_head.predictor.
  {query_embed,input_proj,class_embed,mask_embed.layers.{j}}`, `predictor.transformer.decoder.layers.{i}.
  {self_attn,multihead_attn}.{in_proj_weight,in_proj_bias,out_proj}` (q/k/v fused, split here), `linear{1,2}`,
  `norm{1,2,3}`, `transformer.decoder.norm`; `criterion.empty_weight` dropped. Backbones: detectron2's ResNet
  (`backbone.stem.conv1{,.norm}`, `backbone.res{2..5}.{l}.{conv{1,2,3},shortcut}{,.norm}`, FrozenBN without a batch
  counter) or the official Swin (`backbone.layers.*`, `backbone.norm{i}`, via `seglab.convert.swin`).

ImageNet backbones (source `official`, recognised by having no `sem_seg_head.*` key) convert to backbone-only weights
for a recipe's `model.pretrained`:
- torchvision ResNet-50/101 state dicts (`conv1`, `bn1`, `layer{1..4}.{l}.{conv,bn}{1,2,3}`, `.downsample.{0,1}`;
  the `IMAGENET1K_V1` weights that detectron2's `R-50.pkl` repackages): seglab's ResNet keeps torchvision's names, so
  they gain the `backbone.` prefix; the classifier `fc.*` is dropped. detectron2's pickled `.pkl` files are not read.
- official Swin ImageNet checkpoints (`swin_tiny_patch4_window7_224.pth` ..., the `model` dict: `patch_embed.*`,
  `layers.{i}.blocks.{j}.*`, `layers.{i}.downsample.*`, `norm.*`, `head.*`), through
  `seglab.convert.swin.convert_swin_official` as for UperNet-Swin (classifier `norm` / `head` and the window buffers
  dropped). The per-stage output norms are not in an ImageNet checkpoint: they get LayerNorm's initialisation
  (weight 1, bias 0), as MaskFormer's `D2SwinTransformer` builds them. A window other than the model's default
  becomes a `window_size` override (set it in the recipe too).
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
    finalize,
    model_variant,
    split_rows,
)
from seglab.convert.swin import (
    convert_swin_hf,
    convert_swin_imagenet,
    convert_swin_official,
    is_swin_imagenet,
    window_of,
)

_PARAM = r"(weight|bias)"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_PD = "decode_head.pixel_decoder"
_PR = "decode_head.predictor"
_DEC = f"{_PR}.decoder.layers"

MODEL_PREFIXES = ("maskformer_r", "maskformer_swin_")


def maskformer_backbone(model_name: str, source: str) -> str:
    """`maskformer_r50` -> `r50`, `maskformer_swin_t` -> `swin_t`; other names are refused with the supported list."""
    from seglab.models.maskformer import MASKFORMER_RESNET_VARIANTS, MASKFORMER_SWIN_VARIANTS

    variants = [f"r{d}" for d in MASKFORMER_RESNET_VARIANTS] + [f"swin_{v}" for v in MASKFORMER_SWIN_VARIANTS]
    return model_variant(model_name, "maskformer_", variants, "MaskFormer", source)


# --- transformers ---------------------------------------------------------------------------------------------------

_HF_PX = r"model\.pixel_level_module\.decoder"
_HF_TR = r"model\.transformer_module"
_HF_LAYER = rf"{_HF_TR}\.decoder\.layers\.(\d+)"
_HF_ATTN = {"self_attn": "self_attn", "encoder_attn": "cross_attn"}
_HF_PROJ = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "out_proj", "out_proj": "out_proj"}
_HF_NORMS = {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"}


def _hf_head_table(num_laterals: int) -> list[RenameRule]:
    """Head renames; transformers numbers the FPN layers from the deepest lateral (`fpn.layers.0` is stage n - 2)."""
    return [
        RenameRule(rf"{_HF_PX}\.fpn\.stem\.0\.weight", f"{_PD}.output_convs.{num_laterals}.conv.weight"),
        RenameRule(rf"{_HF_PX}\.fpn\.stem\.1\.{_PARAM}", rf"{_PD}.output_convs.{num_laterals}.norm.\1"),
        RenameRule(rf"{_HF_PX}\.fpn\.layers\.(\d+)\.proj\.0\.weight",
                   lambda m: f"{_PD}.lateral_convs.{num_laterals - 1 - int(m[1])}.conv.weight"),
        RenameRule(rf"{_HF_PX}\.fpn\.layers\.(\d+)\.proj\.1\.{_PARAM}",
                   lambda m: f"{_PD}.lateral_convs.{num_laterals - 1 - int(m[1])}.norm.{m[2]}"),
        RenameRule(rf"{_HF_PX}\.fpn\.layers\.(\d+)\.block\.0\.weight",
                   lambda m: f"{_PD}.output_convs.{num_laterals - 1 - int(m[1])}.conv.weight"),
        RenameRule(rf"{_HF_PX}\.fpn\.layers\.(\d+)\.block\.1\.{_PARAM}",
                   lambda m: f"{_PD}.output_convs.{num_laterals - 1 - int(m[1])}.norm.{m[2]}"),
        RenameRule(rf"{_HF_PX}\.mask_projection\.{_PARAM}", rf"{_PD}.mask_features.\1"),
        RenameRule(rf"{_HF_TR}\.queries_embedder\.weight", f"{_PR}.query_embed.weight"),
        RenameRule(rf"{_HF_TR}\.input_projection\.{_PARAM}", rf"{_PR}.input_proj.\1"),
        RenameRule(rf"{_HF_LAYER}\.(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|o_proj|out_proj)\.{_PARAM}",
                   lambda m: f"{_DEC}.{m[1]}.{_HF_ATTN[m[2]]}.{_HF_PROJ[m[3]]}.{m[4]}"),
        RenameRule(rf"{_HF_LAYER}\.({'|'.join(_HF_NORMS)})\.{_PARAM}",
                   lambda m: f"{_DEC}.{m[1]}.{_HF_NORMS[m[2]]}.{m[3]}"),
        RenameRule(rf"{_HF_LAYER}\.(?:mlp\.)?(fc1|fc2)\.{_PARAM}", rf"{_DEC}.\1.ffn.\2.\3"),
        RenameRule(rf"{_HF_TR}\.decoder\.layernorm\.{_PARAM}", rf"{_PR}.decoder.norm.\1"),
        RenameRule(rf"class_predictor\.{_PARAM}", rf"{_PR}.class_embed.\1"),
        RenameRule(rf"mask_embedder\.(\d+)\.0\.{_PARAM}", rf"{_PR}.mask_embed.layers.\1.\2"),
    ]


_HF_ENC = r"model\.pixel_level_module\.encoder"
HF_RESNET_TABLE = [
    RenameRule(rf"{_HF_ENC}\.embedder\.embedder\.convolution\.weight", "backbone.conv1.weight"),
    RenameRule(rf"{_HF_ENC}\.embedder\.embedder\.normalization\.{_BN}", r"backbone.bn1.\1"),
    RenameRule(rf"{_HF_ENC}\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight",
               lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.downsample.0.weight"),
    RenameRule(rf"{_HF_ENC}\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.{_BN}",
               lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
    RenameRule(rf"{_HF_ENC}\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution\.weight",
               lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.weight"),
    RenameRule(rf"{_HF_ENC}\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization\.{_BN}",
               lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
]


def _hf_swin_backbone(source: SourceKeys, target: TargetDict) -> None:
    """MaskFormerSwin keys -> seglab Swin keys (output norms here, the rest through `convert_swin_hf`)."""
    prefix = "model.pixel_level_module.encoder.model."
    keys = [k for k in source.keys() if k.startswith(prefix)]
    converted = convert_swin_hf({"backbone." + k[len(prefix):]: source.tensors[k] for k in keys})
    source.consumed.update(keys)
    for key, value in converted.items():
        target.put(key, value, f"{prefix}*")
    apply_rename_table(source, target, [
        RenameRule(rf"{_HF_ENC}\.hidden_states_norms\.(?:stage)?(\d+)\.{_PARAM}", r"backbone.out_norms.\1.\2"),
    ])


def _num_laterals(keys: list[str], pattern: str) -> int:
    found = {int(m[1]) for k in keys if (m := re.fullmatch(pattern, k))}
    if not found:
        raise ValueError(f"no pixel-decoder lateral conv found (expected keys matching {pattern!r})")
    return max(found) + 1


def _finish(source: SourceKeys, target: TargetDict, model_name: str, layout: str,
            numerics: dict | None = None) -> ConversionResult:
    """Reads classes, queries, decoder depth and the Swin window from the converted tensors, then checks the result;
    `numerics` are the layout's fixed overrides."""
    from seglab.models.maskformer import MaskFormerOptions

    source.check_consumed(f"{model_name} ({layout} layout)")
    key = f"{_PR}.class_embed.weight"
    if key not in target.tensors:
        raise ValueError(f"the {layout} checkpoint has no class head ({key}); is it truncated?")
    defaults = MaskFormerOptions()
    overrides: dict = dict(numerics or {})
    num_classes = int(target.tensors[key].shape[0]) - 1
    queries = int(target.tensors[f"{_PR}.query_embed.weight"].shape[0])
    if queries != defaults.num_queries:
        overrides["num_queries"] = queries
    layers = len({k.split(".")[4] for k in target.tensors if k.startswith(f"{_DEC}.")})
    if layers != defaults.dec_layers:
        overrides["dec_layers"] = layers
    window = window_of(target.tensors)
    if window is not None:
        from seglab.models.maskformer import MASKFORMER_SWIN_VARIANTS

        if window != MASKFORMER_SWIN_VARIANTS[maskformer_backbone(model_name, layout).removeprefix("swin_")].window:
            overrides["window_size"] = window
    return finalize(source, target, model_name, num_classes, overrides)


def convert_maskformer_hf(
    state_dict: Mapping[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts transformers' `MaskFormerForInstanceSegmentation` (Swin or ResNet backbone).

    Args:
        state_dict: the model's state dict (`model.safetensors` of a hub repository such as
            `facebook/maskformer-swin-base-ade`).
        model_name: `maskformer_swin_t` .. `maskformer_swin_l`, `maskformer_r50` or `maskformer_r101`; its backbone
            must be the checkpoint's.
        origin: the file name, for error messages.

    Returns:
        The state dict under seglab's names, `num_classes`, and overrides for a non-default number of queries or
        decoder layers or Swin window.
    """
    backbone = maskformer_backbone(model_name, "hf")
    source = SourceKeys(state_dict, origin)
    source.drop(r"criterion\.empty_weight")
    target = TargetDict()
    if backbone.startswith("swin_"):
        _hf_swin_backbone(source, target)
    else:
        apply_rename_table(source, target, HF_RESNET_TABLE)
    apply_rename_table(source, target, _hf_head_table(_num_laterals(list(source.tensors),
                                                                    rf"{_HF_PX}\.fpn\.layers\.(\d+)\.proj\.0\.weight")))
    return _finish(source, target, model_name, "hf")


# --- official (detectron2) -------------------------------------------------------------------------------------------

_OF_PX = r"sem_seg_head\.pixel_decoder"
_OF_PR = r"sem_seg_head\.predictor"
_OF_LAYER = rf"{_OF_PR}\.transformer\.decoder\.layers\.(\d+)"
OFFICIAL_HEAD_TABLE = [
    RenameRule(rf"{_OF_PX}\.adapter_(\d)\.weight", lambda m: f"{_PD}.lateral_convs.{int(m[1]) - 1}.conv.weight"),
    RenameRule(rf"{_OF_PX}\.adapter_(\d)\.norm\.{_PARAM}",
               lambda m: f"{_PD}.lateral_convs.{int(m[1]) - 1}.norm.{m[2]}"),
    RenameRule(rf"{_OF_PX}\.layer_(\d)\.weight", lambda m: f"{_PD}.output_convs.{int(m[1]) - 1}.conv.weight"),
    RenameRule(rf"{_OF_PX}\.layer_(\d)\.norm\.{_PARAM}", lambda m: f"{_PD}.output_convs.{int(m[1]) - 1}.norm.{m[2]}"),
    RenameRule(rf"{_OF_PX}\.mask_features\.{_PARAM}", rf"{_PD}.mask_features.\1"),
    RenameRule(rf"{_OF_PR}\.query_embed\.weight", f"{_PR}.query_embed.weight"),
    RenameRule(rf"{_OF_PR}\.input_proj\.{_PARAM}", rf"{_PR}.input_proj.\1"),
    RenameRule(rf"{_OF_LAYER}\.self_attn\.out_proj\.{_PARAM}", rf"{_DEC}.\1.self_attn.out_proj.\2"),
    RenameRule(rf"{_OF_LAYER}\.multihead_attn\.out_proj\.{_PARAM}", rf"{_DEC}.\1.cross_attn.out_proj.\2"),
    RenameRule(rf"{_OF_LAYER}\.linear(1|2)\.{_PARAM}", rf"{_DEC}.\1.ffn.fc\2.\3"),
    RenameRule(rf"{_OF_LAYER}\.norm(1|2|3)\.{_PARAM}", rf"{_DEC}.\1.norm\2.\3"),
    RenameRule(rf"{_OF_PR}\.transformer\.decoder\.norm\.{_PARAM}", rf"{_PR}.decoder.norm.\1"),
    RenameRule(rf"{_OF_PR}\.class_embed\.{_PARAM}", rf"{_PR}.class_embed.\1"),
    RenameRule(rf"{_OF_PR}\.mask_embed\.layers\.(\d+)\.{_PARAM}", rf"{_PR}.mask_embed.layers.\1.\2"),
]
_FROZEN_BN = r"(weight|bias|running_mean|running_var)"
OFFICIAL_RESNET_TABLE = [
    RenameRule(r"backbone\.stem\.conv1\.weight", "backbone.conv1.weight"),
    RenameRule(rf"backbone\.stem\.conv1\.norm\.{_FROZEN_BN}", r"backbone.bn1.\1"),
    RenameRule(r"backbone\.res(\d)\.(\d+)\.conv(\d)\.weight",
               lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    RenameRule(rf"backbone\.res(\d)\.(\d+)\.conv(\d)\.norm\.{_FROZEN_BN}",
               lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
    RenameRule(r"backbone\.res(\d)\.(\d+)\.shortcut\.weight",
               lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    RenameRule(rf"backbone\.res(\d)\.(\d+)\.shortcut\.norm\.{_FROZEN_BN}",
               lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
]
_OF_IN_PROJ = rf"{_OF_LAYER}\.(self_attn|multihead_attn)\.in_proj_(weight|bias)"


def convert_maskformer_official(
    state_dict: Mapping[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts a facebookresearch/MaskFormer (detectron2) semantic-segmentation checkpoint.

    Or converts an ImageNet backbone (torchvision ResNet, official Swin; no `sem_seg_head.*` key) to backbone-only
    weights (see the module docstring).

    Args:
        state_dict: the checkpoint's `model` dict (`backbone.*`, `sem_seg_head.pixel_decoder.*`,
            `sem_seg_head.predictor.*`, `criterion.empty_weight`), or an ImageNet backbone's state dict.
        model_name: `maskformer_r50`, `maskformer_r101` or `maskformer_swin_t` .. `_l`; its backbone must be the
            checkpoint's.
        origin: the file name, for error messages.

    Returns:
        The state dict under seglab's names (the fused attention projections split into q/k/v; detectron2's FrozenBN
        statistics as BatchNorm ones), `num_classes` and overrides (queries, decoder layers, Swin window), with
        `official_inference=True` (the official semantic map, see `seglab.models.maskformer.MaskFormerOptions`) and,
        for Swin, `shrink_window=False`.
    """
    backbone = maskformer_backbone(model_name, "official")
    if not any(k.startswith("sem_seg_head.") for k in state_dict):
        return _imagenet_backbone(state_dict, model_name, backbone, origin)
    source = SourceKeys(state_dict, origin)
    source.drop(r"criterion\.empty_weight|pixel_(mean|std)")
    target = TargetDict()
    if backbone.startswith("swin_"):
        keys = [k for k in source.keys() if k.startswith("backbone.")]
        converted = convert_swin_official({k: source.tensors[k] for k in keys})
        source.consumed.update(keys)
        for key, value in converted.items():
            target.put(key, value, "backbone.*")
    else:
        apply_rename_table(source, target, OFFICIAL_RESNET_TABLE)
    for key in source.keys():
        match = re.fullmatch(_OF_IN_PROJ, key)
        if match is None:
            continue
        layer, attn, param = match[1], "self_attn" if match[2] == "self_attn" else "cross_attn", match[3]
        fused = source.take(key)
        dim = fused.shape[0] // 3
        for name, part in zip(("q_proj", "k_proj", "v_proj"), split_rows(fused, [dim] * 3, key), strict=True):
            target.put(f"{_DEC}.{layer}.{attn}.{name}.{param}", part, key)
    apply_rename_table(source, target, OFFICIAL_HEAD_TABLE)
    # the official test-time computation (pad to 32, upsample before the sigmoid); its Swin keeps the full window on
    # maps smaller than it, as the Swin segmentation code it comes from
    numerics = {"official_inference": True, **({"shrink_window": False} if backbone.startswith("swin_") else {})}
    return _finish(source, target, model_name, "official", numerics)


# --- ImageNet backbones (backbone-only) -----------------------------------------------------------------------------

TORCHVISION_RESNET_TABLE = [
    RenameRule(rf"(conv1\.weight|bn1\.{_BN})", r"backbone.\1"),
    RenameRule(rf"(layer[1-4]\.\d+\.(?:conv[123]\.weight|bn[123]\.{_BN}|downsample\.0\.weight|downsample\.1\.{_BN}))",
               r"backbone.\1"),
]
TORCHVISION_RESNET_DROPPED = rf"fc\.{_PARAM}"  # the ImageNet classifier


def _imagenet_backbone(
    state_dict: Mapping[str, torch.Tensor], model_name: str, backbone: str, origin: str
) -> ConversionResult:
    """A torchvision ResNet or an ImageNet Swin checkpoint (official or timm) as the backbone-only weights of
    `model_name`."""
    if backbone.startswith("swin_"):
        if not is_swin_imagenet(state_dict):
            raise ValueError(f"{origin}: expected an ImageNet Swin checkpoint (official `swin_*_patch4_window*.pth` or "
                             f"timm `swin_*`: `patch_embed.proj.*`, `layers.{{i}}.blocks.{{j}}.*`) or a whole "
                             f"MaskFormer one (`sem_seg_head.*`) for {model_name}; first keys: "
                             f"{', '.join(list(state_dict)[:5])}")
        from seglab.models.maskformer import MASKFORMER_SWIN_VARIANTS

        return convert_swin_imagenet(state_dict, model_name, origin,
                                     MASKFORMER_SWIN_VARIANTS[backbone.removeprefix("swin_")].window)
    if not any(k.startswith("layer1.") for k in state_dict):
        raise ValueError(f"{origin}: expected a torchvision ResNet state dict (`conv1.weight`, `layer1.0.*`, ...) "
                         f"or a whole MaskFormer checkpoint (`sem_seg_head.*`) for {model_name}; first keys: "
                         f"{', '.join(list(state_dict)[:5])}")
    source = SourceKeys(state_dict, origin)
    target = TargetDict()
    source.drop(TORCHVISION_RESNET_DROPPED)
    apply_rename_table(source, target, TORCHVISION_RESNET_TABLE)
    source.check_consumed(f"the backbone of {model_name} (ImageNet ResNet)")
    return finalize(source, target, model_name, None, {}, backbone_only=True)


__all__ = ["convert_maskformer_hf", "convert_maskformer_official", "maskformer_backbone"]
