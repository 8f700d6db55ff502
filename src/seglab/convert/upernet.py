"""UperNet-Swin checkpoints -> seglab: Hugging Face transformers, official Swin segmentation (mmseg 0.x), mmseg 1.x.

Heads. mmseg (both versions) and the official Swin segmentation repo: `decode_head.psp_modules.{k}.1.{conv,bn}`,
`decode_head.bottleneck`, `decode_head.lateral_convs.{i}`, `decode_head.fpn_convs.{i}`, `decode_head.fpn_bottleneck`
(ConvModules `{conv,bn}`), `decode_head.conv_seg`, `auxiliary_head.convs.0.{conv,bn}`, `auxiliary_head.conv_seg`.
transformers (`UperNetForSemanticSegmentation`): the same module names with `batch_norm` for `bn` and `classifier` for
`conv_seg`.

Backbones are mapped by `seglab.convert.swin` (transformers' `SwinBackbone`; the official / mmseg 0.x and mmseg 1.x
Swin layouts, told apart by their keys). Source `mmseg` covers both mmseg-based layouts.

Numerics: both mmseg-based codes keep Swin's full 7x7 (12x12) window and its shift on a stage map smaller than the
window and pad it, where transformers (and seglab's default) shrink the window to the map: the mmseg converter sets
`shrink_window=False` (measured against mmseg 1.2.2 on a 75x93 input, whose stride-16 and -32 maps are 5x6 and 3x3: a
difference of 2.1 in the stage-3 features without it, 1e-5 with it, tests/reference/test_mmseg.py). At inputs whose
every stage map exceeds the window (224 pixels and more on each side for window 7) the two agree.
"""

from __future__ import annotations

from collections.abc import Callable

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
from seglab.convert.swin import convert_swin_hf, convert_swin_imagenet, convert_swin_official, is_swin_imagenet

_PARAM = r"(weight|bias)"
_BN_LEAF = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _head_table(norm: str, classifier: str) -> list[RenameRule]:
    """Head renames for a layout whose ConvModule norm child is `norm` and whose classifier is `classifier`."""
    conv_module = r"(bottleneck|fpn_bottleneck|lateral_convs\.\d+|fpn_convs\.\d+)"
    return [
        RenameRule(r"decode_head\.psp_modules\.(\d+)\.1\.conv\.weight", r"decode_head.ppm.convs.\1.conv.weight"),
        RenameRule(rf"decode_head\.psp_modules\.(\d+)\.1\.{norm}\.{_BN_LEAF}", r"decode_head.ppm.convs.\1.norm.\2"),
        RenameRule(rf"decode_head\.{conv_module}\.conv\.weight", r"decode_head.\1.conv.weight"),
        RenameRule(rf"decode_head\.{conv_module}\.{norm}\.{_BN_LEAF}", r"decode_head.\1.norm.\2"),
        RenameRule(rf"decode_head\.{classifier}\.{_PARAM}", r"decode_head.classifier.\1"),
        RenameRule(r"auxiliary_head\.convs\.(\d+)\.conv\.weight", r"aux_heads.0.convs.\1.conv.weight"),
        RenameRule(rf"auxiliary_head\.convs\.(\d+)\.{norm}\.{_BN_LEAF}", r"aux_heads.0.convs.\1.norm.\2"),
        RenameRule(rf"auxiliary_head\.{classifier}\.{_PARAM}", r"aux_heads.0.classifier.\1"),
    ]


MMSEG_HEAD_TABLE = _head_table("bn", "conv_seg")
# buffers derived from the window size in the source Swin layouts (persistent there, recomputed in seglab)
DERIVED_BUFFERS = r"backbone\..*\.(relative_position_index|attn_mask)"
# the Swin segmentation code and mmseg's `SwinTransformer` pad a map smaller than the window instead of shrinking the
# window (transformers shrinks it, as seglab's default)
MMSEG_OVERRIDES: dict = {"shrink_window": False}
HF_HEAD_TABLE = _head_table("batch_norm", "classifier")


def upernet_variant(model_name: str, source: str) -> str:
    """`upernet_swin_t` -> `t`; other names are refused with the supported list."""
    from seglab.models.upernet import UPERNET_SWIN_VARIANTS

    return model_variant(model_name, "upernet_swin_", UPERNET_SWIN_VARIANTS, "UperNet-Swin", source)


def _finish(
    source: SourceKeys, target: TargetDict, model_name: str, layout: str, numerics: dict | None = None
) -> ConversionResult:
    """Reads classes, head width and whether the auxiliary head is present, then checks the result; `numerics` are the
    layout's fixed overrides."""
    source.check_consumed(f"{model_name} ({layout} layout)")
    key = "decode_head.classifier.weight"
    if key not in target.tensors:
        raise ValueError(f"the {layout} checkpoint has no decode-head classifier; is it truncated?")
    num_classes, channels = target.tensors[key].shape[:2]
    overrides: dict = dict(numerics or {})
    if channels != 512:
        overrides["head_channels"] = int(channels)
    aux_key = "aux_heads.0.classifier.weight"
    if aux_key in target.tensors:
        aux_channels = int(target.tensors[aux_key].shape[1])
        if aux_channels != 256:
            overrides["aux_channels"] = aux_channels
    else:
        overrides["aux_head"] = False
    window = next((v for k, v in target.tensors.items() if k.endswith("relative_position_bias_table")), None)
    if window is not None:
        side = int(round(window.shape[0] ** 0.5))  # ((2w - 1)^2, heads)
        if (side + 1) // 2 != 7:
            overrides["window_size"] = (side + 1) // 2
    return finalize(source, target, model_name, int(num_classes), overrides)


def _convert(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str, layout: str,
    backbone: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], head_table: list[RenameRule],
    numerics: dict | None = None,
) -> ConversionResult:
    """Head renames plus a backbone mapping (`backbone.*` keys in and out) applied to the `backbone.*` keys; the model
    name was checked by the caller; `numerics` are the layout's fixed overrides."""
    source = SourceKeys(state_dict, origin)
    target = TargetDict()
    backbone_keys = [k for k in source.keys() if k.startswith("backbone.")]
    converted = backbone({k: source.tensors[k] for k in backbone_keys})  # fails on a backbone key it cannot map
    source.drop(DERIVED_BUFFERS)  # skipped by the Swin mappings; listed in `dropped` like every unused key
    source.consumed.update(backbone_keys)
    for key, value in converted.items():
        target.put(key, value, "backbone.*")
    apply_rename_table(source, target, head_table)
    return _finish(source, target, model_name, layout, numerics)


def convert_upernet_swin_hf(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts transformers' `UperNetForSemanticSegmentation` with a `SwinBackbone` (`openmmlab/upernet-swin-*`).

    Args:
        state_dict: the model's state dict (`model.safetensors` of the hub repository).
        model_name: `upernet_swin_t` .. `upernet_swin_l`.
        origin: the file name, for error messages.
    """
    upernet_variant(model_name, "hf")
    return _convert(state_dict, model_name, origin, "hf", convert_swin_hf, HF_HEAD_TABLE)


def convert_upernet_swin_mmseg(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts a UperNet-Swin checkpoint of the official Swin-Transformer-Semantic-Segmentation repo (mmseg 0.x
    layout) or of mmsegmentation 1.x (the backbone layout is recognised from the keys), or an ImageNet Swin classifier
    (official `swin_*_patch4_window*.pth` or timm `swin_*`) to backbone-only weights (`convert_swin_imagenet`).

    Args:
        state_dict: the segmentor's `state_dict`.
        model_name: `upernet_swin_t` .. `upernet_swin_l`.
        origin: the file name, for error messages.

    Returns:
        seglab keys, `num_classes`, and `MMSEG_OVERRIDES` (both codes keep the full attention window on maps smaller
        than it) with the head widths and window size the checkpoint's shapes tell.
    """
    variant = upernet_variant(model_name, "mmseg")
    if is_swin_imagenet(state_dict):  # what the recipes' `model.pretrained` starts from
        from seglab.backbones.swin import SWIN_CONFIGS

        return convert_swin_imagenet(state_dict, model_name, origin, SWIN_CONFIGS[variant].window_size)
    return _convert(state_dict, model_name, origin, "mmseg", convert_swin_official, MMSEG_HEAD_TABLE, MMSEG_OVERRIDES)


def convert_upernet_asmlp(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts a UperNet-AS-MLP checkpoint of svip-lab/AS-MLP-Semantic-Segmentation (mmseg 0.11, the Swin
    segmentation code's UPerHead / FCNHead names), or an ImageNet AS-MLP checkpoint as backbone-only weights.

    The shift size changes no shape, so the checkpoint cannot tell it: `upernet_asmlp_s` is built with the S
    segmentation config's shift 3 by default (pass `shift_size=5` for a model trained otherwise).

    Args:
        state_dict: the segmentor's `state_dict` (`backbone.*`, `decode_head.*`, `auxiliary_head.*`), or an official
            classification checkpoint (`patch_embed.*`, `layers.*`, `norm.*`, `head.*`; the classifier is dropped).
        model_name: `upernet_asmlp_t`, `_s` or `_b`; its variant must match the checkpoint's.
        origin: the file name, for error messages.
    """
    from seglab.convert.asmlp import asmlp_backbone_state, variant_from_state
    from seglab.models.asmlp import UPERNET_ASMLP_VARIANTS

    variant = model_variant(model_name, "upernet_asmlp_", UPERNET_ASMLP_VARIANTS, "UperNet-AS-MLP", "official")
    found = variant_from_state(state_dict)
    if found != variant:
        raise ValueError(f"{origin}: is an AS-MLP-{found.upper()} checkpoint, but {model_name!r} has an "
                         f"AS-MLP-{variant.upper()} backbone")

    def backbone(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        converted, _ = asmlp_backbone_state(tensors, variant)
        return {f"backbone.{k}": v for k, v in converted.items()}

    if not has_decode_head(state_dict):  # an ImageNet checkpoint: backbone keys only
        source = SourceKeys(state_dict, origin)
        converted, dropped = asmlp_backbone_state(state_dict, variant)
        source.consumed.update(state_dict)
        target = TargetDict()
        for key, value in converted.items():
            target.put(f"backbone.{key}", value, "AS-MLP backbone")
        result = finalize(source, target, model_name, None, {}, backbone_only=True)
        result.dropped.extend(dropped)
        return result
    return _convert(state_dict, model_name, origin, "AS-MLP-Semantic-Segmentation", backbone, MMSEG_HEAD_TABLE)
