"""Official BPR checkpoints (chenhang98/BPR, formerly tinyalpha/BPR; mmseg 0.7) -> seglab `BPRNet`.

Layout of the released files (mmcv `save_checkpoint`: the network under `state_dict`, next to `meta` and
`optimizer`): an mmseg `EncoderDecoderRefine` with
- `backbone.*`: `HRNetRefine` = mmseg's HRNet (the official HRNet names: `conv1`, `bn1`, `conv2`, `bn2`, `layer1`,
  `transition{1,2,3}`, `stage{2,3,4}.{m}.branches` / `.fuse_layers`), mapped by `seglab.convert.hrnet`'s mmseg table,
  plus `backbone.conv_mask.weight` (the coarse-mask conv, 1 -> 64, 3x3 stride 2), seglab's top-level `conv_mask`;
- `decode_head.*`: `FCNHead` with one 1x1 ConvModule (`convs.0.conv.weight`, `convs.0.bn.*`, no conv bias) and
  `conv_seg` (2 classes), seglab's `decode_head.fuse` and `decode_head.classifier`.

Numerics: BPR's mmseg upsamples the coarser HRNet branches in the fuse layers bilinearly (`align_corners=False`) and
resizes bilinearly in the head's concatenation, which is `BPRNet`'s default. The network input size (128 for
`bpr_hrnet18s`, 256 for `bpr_hrnet48`) is the variant's; no override is returned.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from seglab.convert.common import ConversionResult, RenameRule, SourceKeys, TargetDict, apply_rename_table
from seglab.convert.hrnet import MMSEG_BACKBONE_TABLE, MMSEG_HEAD_TABLE

BPR_TABLE: list[RenameRule] = [
    RenameRule(r"backbone\.conv_mask\.weight", "conv_mask.weight"),
    *MMSEG_BACKBONE_TABLE,
    *MMSEG_HEAD_TABLE,
]


def bpr_variant(model_name: str) -> str:
    """Checks that `model_name` is a `BPR_VARIANTS` entry (`bpr_hrnet18s`, `bpr_hrnet48`) and returns it."""
    from seglab.models.bpr import BPR_VARIANTS

    if model_name not in BPR_VARIANTS:
        raise ValueError(f"source 'official' converts BPR checkpoints to the BPR refinement networks only; model must "
                         f"be one of {', '.join(BPR_VARIANTS)}, got {model_name!r}")
    return model_name


def convert_bpr_official(
    state_dict: Mapping[str, torch.Tensor], model_name: str, origin: str = "state dict"
) -> ConversionResult:
    """Converts an official BPR checkpoint (`EncoderDecoderRefine`: `HRNetRefine` + `FCNHead`) for `build_bpr`.

    Args:
        state_dict: the checkpoint's `state_dict` (`backbone.*`, `decode_head.*`).
        model_name: `bpr_hrnet18s` (`configs/bpr/hrnet18s_128.py`) or `bpr_hrnet48` (`hrnet48_256.py`); its HRNet
            must be the checkpoint's.
        origin: the file name, for error messages.

    Returns:
        `BPRNet` keys (load with `build_bpr(model_name).load_state_dict(..., strict=True)`), `num_classes` read from
        the classifier (2), no overrides.

    Raises:
        ValueError: naming keys the converter does not understand, keys missing for `model_name`'s network, or
            shapes of another HRNet width.
    """
    from seglab.models.bpr import BPR_VARIANTS, BPRNet

    variant = BPR_VARIANTS[bpr_variant(model_name)]
    source = SourceKeys(state_dict, origin)
    target = TargetDict()
    apply_rename_table(source, target, BPR_TABLE)
    source.check_consumed(f"{model_name} (official BPR layout)")
    key = "decode_head.classifier.weight"
    if key not in target.tensors:
        raise ValueError(f"{origin}: no classifier `decode_head.conv_seg.weight`; is it a BPR checkpoint?")
    num_classes = int(target.tensors[key].shape[0])
    with torch.device("meta"):
        expected = BPRNet(variant.hrnet, variant.input_size, num_classes=num_classes).state_dict()
    state = target.tensors
    for name, value in expected.items():  # counters absent from old checkpoints play no part in inference
        if name not in state and name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=value.dtype)
    missing = [k for k in expected if k not in state]
    unexpected = [f"{k} (from {target.origin[k]!r})" for k in state if k not in expected]
    mismatched = [f"{target.origin[k]!r}: {tuple(state[k].shape)}, {model_name} expects {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        others = ", ".join(v for v in BPR_VARIANTS if v != model_name)
        lines = [f"{origin} does not fit {model_name} (a checkpoint of {others}?):"]
        for label, items in (("shape mismatches", mismatched), ("missing", missing), ("unexpected", unexpected)):
            if items:
                lines.append(f"  {label} ({len(items)}): " + "; ".join(items[:8]))
        raise ValueError("\n".join(lines))
    return ConversionResult(state_dict={k: state[k].contiguous() for k in expected}, overrides={},
                            num_classes=num_classes, dropped=list(source.dropped))


__all__ = ["BPR_TABLE", "bpr_variant", "convert_bpr_official"]
