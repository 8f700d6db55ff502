"""CycleMLP checkpoints (official ShoufaChen/CycleMLP `cycle_mlp.py`) -> seglab `CycleMLP` keys.

Official layout (`CycleNet`): the stem `patch_embed.proj`; `network` = [stage 0, transition 0, stage 1, transition 1,
stage 2, transition 2, stage 3], so blocks are `network.{0,2,4,6}.{j}.{norm1, attn.mlp_c, attn.sfc_h, attn.sfc_w,
attn.reweight.fc1, attn.reweight.fc2, attn.proj, norm2, mlp.fc1, mlp.fc2}` (`attn.mlp_c` has no bias; each Cycle FC
holds `weight` (C, C, 1, 1), `bias` and the fixed `offset` buffer (1, 2C, 1, 1)) and transitions
`network.{1,3,5}.proj`. The released ImageNet checkpoints (`CycleMLP_B{1..5}.pth`, state dict under `model`, which
`seglab.convert.common.read_source` unwraps) end with the classifier `norm` and `head`; the dense-prediction
`CycleMLP_B*_feat` backbones have the output norms `norm{0,2,4,6}` instead (under `backbone.` in an mm-framework
checkpoint).

seglab names: `network.{2i}.{j}` -> `stages.{i}.blocks.{j}` (block and mixer names kept), `network.{2i-1}.proj` ->
`stages.{i}.downsample.proj`, `norm{2i}` -> `out_norms.{i}`. The `offset` buffers are kept (seglab's `CycleFC` has the
same persistent buffer) and checked against the original's formula. Output norms a source lacks (every ImageNet
checkpoint) are filled with LayerNorm's initialisation (weight 1, bias 0), which is what the original's non-strict
load of an ImageNet checkpoint into a `_feat` backbone leaves; the result then loads strictly.

The official repository released no segmentation model (its `semantic/README.md` says "coming soon"), so only
backbone weights convert: `convert_cyclemlp_official` returns a backbone-only `ConversionResult` for a segmentation
model's `model.pretrained`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from seglab.backbones.cyclemlp import CYCLEMLP_CONFIGS, CycleMLP, cycle_offsets
from seglab.convert.common import ConversionResult, RenameRule, SourceKeys, TargetDict, apply_rename_table

_PARAM = r"(weight|bias)"
_BLOCK_PARTS = (r"(norm1\.(?:weight|bias)|norm2\.(?:weight|bias)|attn\.mlp_c\.weight"
                r"|attn\.sfc_[hw]\.(?:weight|bias|offset)|attn\.reweight\.fc[12]\.(?:weight|bias)"
                r"|attn\.proj\.(?:weight|bias)|mlp\.fc[12]\.(?:weight|bias))")
_HEAD_PREFIXES = ("decode_head.", "auxiliary_head.", "neck.")
# seglab model-name prefixes whose backbone is CycleMLP
MODEL_PREFIXES = ("fpn_cyclemlp_",)

BACKBONE_TABLE: list[RenameRule] = [
    RenameRule(rf"patch_embed\.proj\.{_PARAM}", r"patch_embed.proj.\1"),
    RenameRule(rf"network\.([0246])\.(\d+)\.{_BLOCK_PARTS}", lambda m: f"stages.{int(m[1]) // 2}.blocks.{m[2]}.{m[3]}"),
    RenameRule(rf"network\.([135])\.proj\.{_PARAM}", lambda m: f"stages.{(int(m[1]) + 1) // 2}.downsample.proj.{m[2]}"),
    RenameRule(rf"norm([0246])\.{_PARAM}", lambda m: f"out_norms.{int(m[1]) // 2}.{m[2]}"),
]
CLASSIFIER_TABLE: list[RenameRule] = [RenameRule(rf"(norm|head)\.{_PARAM}", r"\1.\2")]


def variant_from_state(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The CycleMLP variant (`b1` .. `b5`) of an official checkpoint, from its stage widths and depths.

    Args:
        state_dict: official-layout tensors, with or without the `backbone.` prefix.

    Raises:
        ValueError: when the stem is missing or the widths / depths match no published variant.
    """
    prefix = "backbone." if any(k.startswith("backbone.") for k in state_dict) else ""
    widths, depths = [], []
    for i in range(4):
        key = f"{prefix}network.{2 * i}.0.norm1.weight"
        if key not in state_dict:
            raise ValueError(f"no {key!r} in the state dict; is it an official CycleMLP checkpoint (keys "
                             f"`network.{{0,2,4,6}}.{{j}}.*`)?")
        widths.append(int(state_dict[key].shape[0]))
        block = re.compile(rf"{re.escape(prefix)}network\.{2 * i}\.(\d+)\.")
        depths.append(1 + max(int(m[1]) for k in state_dict if (m := block.match(k))))
    for variant, config in CYCLEMLP_CONFIGS.items():
        if tuple(widths) == config.embed_dims and tuple(depths) == config.depths:
            return variant
    published = "; ".join(f"{v}: widths {c.embed_dims}, depths {c.depths}" for v, c in CYCLEMLP_CONFIGS.items())
    raise ValueError(f"CycleMLP checkpoint with stage widths {tuple(widths)} and depths {tuple(depths)} matches no "
                     f"published variant ({published}); the Swin-style T/S/B are not supported (their code was "
                     f"never released)")


def cyclemlp_backbone_state(
    state_dict: Mapping[str, torch.Tensor], variant: str, keep_classifier: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Converts an official CycleMLP checkpoint (ImageNet classifier or dense-prediction backbone) into the state
    dict of `CycleMLP(CYCLEMLP_CONFIGS[variant])`.

    Args:
        state_dict: the source tensors in the official layout; a `backbone.` prefix is stripped, and a segmentor's
            `decode_head.*` / `auxiliary_head.*` / `neck.*` keys are dropped (they are not backbone).
        variant: `b1` .. `b5` (`variant_from_state` reads it from the checkpoint).
        keep_classifier: keep the ImageNet classifier (`norm`, `head`), so that the result loads strictly into
            `CycleMLP(config, num_classes=head rows)`; by default it is dropped, for dense prediction.

    Returns:
        (backbone tensors without a `backbone.` prefix, in the model's key order; the source keys dropped). Output
        norms absent from the source are filled with weight 1, bias 0 (see the module docstring).

    Raises:
        ValueError: naming every source key that is not part of the CycleMLP backbone, every missing key, every shape
            that differs from the variant's, and any `offset` buffer that differs from the original's formula.
    """
    if variant not in CYCLEMLP_CONFIGS:
        raise ValueError(f"unknown CycleMLP variant {variant!r}; valid: {', '.join(CYCLEMLP_CONFIGS)} (the Swin-style "
                         f"T/S/B are not supported: their code was never released)")
    source = SourceKeys(state_dict, "CycleMLP state dict")
    prefixed = any(k.startswith("backbone.") for k in state_dict)
    prefix = r"backbone\." if prefixed else ""
    if prefixed:
        for head in _HEAD_PREFIXES:
            source.drop(re.escape(head) + r".*")
    if not keep_classifier:
        source.drop(rf"{prefix}(norm|head)\.{_PARAM}")
    target = TargetDict()
    table = BACKBONE_TABLE + (CLASSIFIER_TABLE if keep_classifier else [])
    apply_rename_table(source, target, [RenameRule(prefix + rule.pattern, rule.target) for rule in table])
    source.check_consumed(f"the CycleMLP-{variant.upper()} backbone (official layout)")
    num_classes = None
    if keep_classifier:
        if "head.weight" not in target.tensors:
            raise ValueError("keep_classifier=True but the state dict has no classifier `head.weight`")
        num_classes = int(target.tensors["head.weight"].shape[0])
    with torch.device("meta"):
        expected = CycleMLP(CYCLEMLP_CONFIGS[variant], num_classes=num_classes).state_dict()
    for key, value in expected.items():
        if key.startswith("out_norms.") and key not in target.tensors:
            fill = torch.ones if key.endswith("weight") else torch.zeros
            target.put(key, fill(value.shape), "LayerNorm initialisation")
    _check_against(target, expected, variant)
    _check_offsets(target)
    return {k: target.tensors[k].contiguous() for k in expected}, list(source.dropped)


def _check_against(target: TargetDict, expected: Mapping[str, torch.Tensor], variant: str) -> None:
    """Raises `ValueError` listing missing keys, keys the variant lacks and shape mismatches."""
    state = target.tensors
    missing = [k for k in expected if k not in state]
    unexpected = [f"{k} (from {target.origin[k]!r})" for k in state if k not in expected]
    mismatched = [f"{target.origin[k]!r}: shape {tuple(state[k].shape)}, CycleMLP-{variant.upper()} expects "
                  f"{tuple(expected[k].shape)}" for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"the state dict does not fit the CycleMLP-{variant.upper()} backbone (another variant? "
                 f"variant_from_state reads it from the checkpoint):"]
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:8]))
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:10]))
        if unexpected:
            lines.append(f"  not in the variant ({len(unexpected)}): " + ", ".join(unexpected[:10]))
        raise ValueError("\n".join(lines))


def _check_offsets(target: TargetDict) -> None:
    """Raises `ValueError` naming the first Cycle FC `offset` that is not the original's fixed pattern."""
    for key, value in target.tensors.items():
        if key.endswith(".offset") and not value.is_meta:
            span = (1, 3) if key.endswith("sfc_h.offset") else (3, 1)
            if not torch.equal(value.detach().float().cpu(), cycle_offsets(value.shape[1] // 2, span)):
                raise ValueError(f"{target.origin[key]!r}: the Cycle FC offsets differ from the original's fixed "
                                 f"pattern for span {span}; is the checkpoint from a modified CycleMLP?")


def cyclemlp_variant(model_name: str) -> str:
    """`fpn_cyclemlp_b2` -> `b2`; any other name is refused with the supported ones."""
    for prefix in MODEL_PREFIXES:
        variant = model_name.removeprefix(prefix)
        if model_name.startswith(prefix) and variant in CYCLEMLP_CONFIGS:
            return variant
    names = ", ".join(f"{p}{v}" for p in MODEL_PREFIXES for v in CYCLEMLP_CONFIGS)
    raise ValueError(f"source 'official' converts CycleMLP checkpoints to CycleMLP models only; model must be one "
                     f"of {names}, got {model_name!r}")


def convert_cyclemlp_official(
    state_dict: dict[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts an official CycleMLP checkpoint into the backbone of a seglab CycleMLP segmentation model.

    Args:
        state_dict: an official ImageNet checkpoint (`CycleMLP_B*.pth`; its classifier is dropped) or a
            dense-prediction backbone state dict, with or without the `backbone.` prefix.
        model_name: the seglab model the weights are for (`fpn_cyclemlp_b1` .. `b5`); its variant must match the
            checkpoint's.
        origin: the file name, for error messages.

    Returns:
        A backbone-only result: `backbone.*` keys (see `cyclemlp_backbone_state`), no `num_classes`, no overrides.

    Raises:
        ValueError: the model name is not a CycleMLP model, the checkpoint holds decode-head weights (no official
            segmentation layout exists to convert them from), its variant differs from the model's, or a key is not
            understood (see `cyclemlp_backbone_state`).
    """
    variant = cyclemlp_variant(model_name)
    heads = [k for k in state_dict if k.startswith(_HEAD_PREFIXES)]
    if heads:
        raise ValueError(f"{origin}: holds segmentation-head keys ({', '.join(heads[:3])}, ...); the official CycleMLP "
                         f"repository released no segmentation model, so only backbone (ImageNet) checkpoints "
                         f"convert with source 'official'")
    found = variant_from_state(state_dict)
    if found != variant:
        raise ValueError(f"{origin}: is a CycleMLP-{found.upper()} checkpoint, but {model_name!r} has a "
                         f"CycleMLP-{variant.upper()} backbone")
    try:
        backbone, dropped = cyclemlp_backbone_state(state_dict, variant)
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from error
    return ConversionResult(state_dict={f"backbone.{k}": v for k, v in backbone.items()}, overrides={},
                            num_classes=None, dropped=dropped, backbone_only=True)


__all__ = ["convert_cyclemlp_official", "cyclemlp_backbone_state", "cyclemlp_variant", "variant_from_state"]
