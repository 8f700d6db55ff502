"""Semantic FPN with a CycleMLP backbone, as in CycleMLP's ADE20K results (arXiv:2107.10224, Table 5).

The official repository released no segmentation code ("coming soon"; CycleMLP#9 points to the PVT repository), so the
decoder is PVT's Semantic FPN (mmseg `FPN` neck with 256 channels + `FPNHead` with 128 channels, dropout 0.1) on the
four CycleMLP-B stages, which reproduces the paper's parameter counts (B1 18.9M ... B5 79.4M at 150 classes). The
official dense-prediction backbones (`CycleMLP_B*_feat`) ignore their keyword arguments, so their stochastic depth is 0:
`drop_path_rate` defaults to 0 here too. The Swin-style CycleMLP-T/S/B (UperNet in the paper) are not in the released
code and not built (see `seglab.backbones.cyclemlp`).
"""

from __future__ import annotations

from dataclasses import dataclass

from seglab.backbones.cyclemlp import CYCLEMLP_CONFIGS, CycleMLP
from seglab.heads.fpn import SemanticFPNHead
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec


@dataclass(frozen=True)
class SemanticFPNCycleMLPOptions:
    """Constructor options of `fpn_cyclemlp_*` (defaults follow PVT's Semantic FPN ADE20K config)."""

    num_classes: int = 150
    in_channels: int = 3
    drop_path_rate: float = 0.0
    neck_channels: int = 256
    head_channels: int = 128
    head_dropout: float = 0.1
    align_corners: bool = False


@dataclass(frozen=True)
class SemanticFPNCycleMLPVariant:
    """One Semantic FPN CycleMLP: the paper's parameter count in millions (ADE20K, 150 classes; Table 5)."""

    published_params_m: float


FPN_CYCLEMLP_VARIANTS: dict[str, SemanticFPNCycleMLPVariant] = {
    "b1": SemanticFPNCycleMLPVariant(18.9), "b2": SemanticFPNCycleMLPVariant(30.6),
    "b3": SemanticFPNCycleMLPVariant(42.1), "b4": SemanticFPNCycleMLPVariant(55.6),
    "b5": SemanticFPNCycleMLPVariant(79.4),
}


def build_fpn_cyclemlp(variant: str, options: SemanticFPNCycleMLPOptions) -> EncoderDecoder:
    """Semantic FPN + CycleMLP-`variant`."""
    backbone = CycleMLP(CYCLEMLP_CONFIGS[variant], in_channels=options.in_channels,
                        drop_path_rate=options.drop_path_rate)
    head = SemanticFPNHead([info.channels for info in backbone.feature_info], options.num_classes,
                           neck_channels=options.neck_channels, channels=options.head_channels,
                           feature_strides=tuple(info.stride for info in backbone.feature_info),
                           dropout=options.head_dropout, align_corners=options.align_corners)
    return EncoderDecoder(backbone, head, num_classes=options.num_classes, output_stride=4,
                          align_corners=options.align_corners)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"fpn_cyclemlp_{_variant}",
        build=build_fpn_cyclemlp,
        variant=_variant,
        options=SemanticFPNCycleMLPOptions,
        published_params_m=_spec.published_params_m,
        description=f"Semantic FPN + CycleMLP-{_variant.upper()}",
    )
    for _variant, _spec in FPN_CYCLEMLP_VARIANTS.items()
)
