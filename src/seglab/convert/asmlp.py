"""AS-MLP backbone checkpoints (official classification code, AS-MLP-Semantic-Segmentation) -> `ASMLP` keys.

seglab's `ASMLP` keeps the original module names, so the conversion strips a prefix, drops what is not backbone, and
checks every key and shape against the variant.

Layouts:
- svip-lab/AS-MLP `models/as_mlp.py` (ImageNet classifier; the released files wrap the state dict in `model`, which
  `seglab.convert.common.read_source` unwraps): `patch_embed.{proj,norm}`, `layers.{i}.blocks.{j}.{norm1,norm2}`,
  `layers.{i}.blocks.{j}.axial_shift.{conv1,conv2_1,conv2_2,conv3,norm1,norm2}`, `layers.{i}.blocks.{j}.mlp.
  {fc1,fc2}`, `layers.{i}.downsample.{norm,reduction}` (stages 0-2), and the classifier `norm` (GroupNorm(1, 8C)) and
  `head` (Linear). The CuPy shift modules hold no tensors. There are no per-stage output norms.
- svip-lab/AS-MLP-Semantic-Segmentation (mmseg 0.11, UperNet): the same names under `backbone.`, plus the output norms
  `backbone.norm{0..3}`; `decode_head.*` and `auxiliary_head.*` (mmseg's UPerHead / FCNHead) belong to the head
  converter (`seglab.convert.upernet.MMSEG_HEAD_TABLE`).

An output norm the source lacks (every classification checkpoint) is filled with GroupNorm's initialisation (weight
1, bias 0): that is what the segmentation code's non-strict load of an ImageNet checkpoint leaves, and it makes the
result load strictly into `ASMLP(config)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from seglab.backbones.asmlp import ASMLP, ASMLP_CONFIGS
from seglab.convert.common import RenameRule, SourceKeys, TargetDict, apply_rename_table

_PARAM = r"(weight|bias)"
_BLOCK_PARTS = r"(norm1|norm2|axial_shift\.(?:conv1|conv2_1|conv2_2|conv3|norm1|norm2)|mlp\.fc1|mlp\.fc2)"
_HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")

# official name -> seglab name; the names are the same, the table is the list of what a backbone may hold
BACKBONE_TABLE: list[RenameRule] = [
    RenameRule(rf"patch_embed\.(proj|norm)\.{_PARAM}", r"patch_embed.\1.\2"),
    RenameRule(rf"layers\.(\d+)\.blocks\.(\d+)\.{_BLOCK_PARTS}\.{_PARAM}", r"layers.\1.blocks.\2.\3.\4"),
    RenameRule(rf"layers\.(\d+)\.downsample\.norm\.{_PARAM}", r"layers.\1.downsample.norm.\2"),
    RenameRule(r"layers\.(\d+)\.downsample\.reduction\.weight", r"layers.\1.downsample.reduction.weight"),
    RenameRule(rf"norm(\d+)\.{_PARAM}", r"norm\1.\2"),
]
CLASSIFIER_TABLE: list[RenameRule] = [RenameRule(rf"(norm|head)\.{_PARAM}", r"\1.\2")]


def variant_from_state(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The AS-MLP variant (`t`, `s`, `b`) of a checkpoint in either layout, from its embedding width and the depth
    of stage 2.

    Args:
        state_dict: the source tensors, with or without the `backbone.` prefix.

    Raises:
        ValueError: when the patch embedding is missing or the width / depth match no published variant.
    """
    prefix = "backbone." if any(k.startswith("backbone.") for k in state_dict) else ""
    key = f"{prefix}patch_embed.proj.weight"
    if key not in state_dict:
        raise ValueError(f"no {key!r} in the state dict; is it an AS-MLP checkpoint?")
    width = int(state_dict[key].shape[0])
    block = re.compile(rf"{re.escape(prefix)}layers\.2\.blocks\.(\d+)\.")
    depth = 1 + max((int(m[1]) for k in state_dict if (m := block.match(k))), default=-1)
    for variant, config in ASMLP_CONFIGS.items():
        if config.embed_dim == width and config.depths[2] == depth:
            return variant
    published = ", ".join(f"{v}: width {c.embed_dim}, stage-2 depth {c.depths[2]}" for v, c in ASMLP_CONFIGS.items())
    raise ValueError(f"AS-MLP checkpoint with width {width} ({key}) and stage-2 depth {depth} matches no published "
                     f"variant ({published})")


def asmlp_backbone_state(
    state_dict: Mapping[str, torch.Tensor], variant: str, keep_classifier: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Converts an official AS-MLP classification checkpoint or an AS-MLP-Semantic-Segmentation checkpoint into
    the state dict of `ASMLP(ASMLP_CONFIGS[variant])` (all four output norms; the shift size does not change any
    shape, so the S segmentation model's shift 3 converts the same).

    Args:
        state_dict: the source tensors; a `backbone.` prefix is stripped and the segmentor's `decode_head.*` /
            `auxiliary_head.*` keys are dropped (convert them with the UperNet head table).
        variant: `t`, `s` or `b` (`variant_from_state` reads it from the checkpoint).
        keep_classifier: keep the ImageNet classifier (`norm`, `head`), so that the result loads strictly into
            `ASMLP(config, num_classes=head rows)`; by default it is dropped, for dense prediction.

    Returns:
        (backbone tensors without a `backbone.` prefix, in the model's key order; the source keys dropped). Output
        norms `norm{i}` absent from the source are filled with weight 1, bias 0 (see the module docstring).

    Raises:
        ValueError: naming every source key that is not part of the AS-MLP backbone, every missing key and every
            shape that differs from the variant's.
    """
    if variant not in ASMLP_CONFIGS:
        raise ValueError(f"unknown AS-MLP variant {variant!r}; valid: {', '.join(ASMLP_CONFIGS)}")
    source = SourceKeys(state_dict, "AS-MLP state dict")
    prefixed = any(k.startswith("backbone.") for k in state_dict)
    if prefixed:
        for head in _HEAD_PREFIXES:
            source.drop(re.escape(head) + r".*")
    prefix = r"backbone\." if prefixed else ""
    if not keep_classifier:
        source.drop(rf"{prefix}(norm|head)\.{_PARAM}")
    target = TargetDict()
    table = BACKBONE_TABLE + (CLASSIFIER_TABLE if keep_classifier else [])
    table = [RenameRule(prefix + rule.pattern, rule.target) for rule in table]
    apply_rename_table(source, target, table)
    source.check_consumed(f"the AS-MLP-{variant.upper()} backbone "
                          f"({'segmentation' if prefixed else 'classification'} layout)")
    num_classes = None
    if keep_classifier:
        if "head.weight" not in target.tensors:
            raise ValueError("keep_classifier=True but the state dict has no classifier `head.weight`")
        num_classes = int(target.tensors["head.weight"].shape[0])
    with torch.device("meta"):
        expected = ASMLP(ASMLP_CONFIGS[variant], num_classes=num_classes).state_dict()
    for key, value in expected.items():
        if re.fullmatch(rf"norm\d+\.{_PARAM}", key) and key not in target.tensors:
            fill = torch.ones if key.endswith("weight") else torch.zeros
            target.put(key, fill(value.shape), "GroupNorm initialisation")
    _check_against(target, expected, variant)
    return {k: target.tensors[k].contiguous() for k in expected}, list(source.dropped)


def _check_against(target: TargetDict, expected: Mapping[str, torch.Tensor], variant: str) -> None:
    """Raises `ValueError` listing missing keys, keys the variant lacks and shape mismatches."""
    state = target.tensors
    missing = [k for k in expected if k not in state]
    unexpected = [f"{k} (from {target.origin[k]!r})" for k in state if k not in expected]
    mismatched = [f"{target.origin[k]!r}: shape {tuple(state[k].shape)}, AS-MLP-{variant.upper()} expects "
                  f"{tuple(expected[k].shape)}" for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"the state dict does not fit the AS-MLP-{variant.upper()} backbone (another variant? "
                 f"variant_from_state reads it from the checkpoint):"]
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:8]))
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:10]))
        if unexpected:
            lines.append(f"  not in the variant ({len(unexpected)}): " + ", ".join(unexpected[:10]))
        raise ValueError("\n".join(lines))
