"""UperNet with an AS-MLP backbone, as in AS-MLP's ADE20K results (arXiv:2107.08391, Table 4; svip-lab/
AS-MLP-Semantic-Segmentation, built on the Swin segmentation code).

Backbone AS-MLP-T/S/B with the segmentation configs' settings (`ASMLP_SEG_OPTIONS`: drop path 0.3 / 0.3 / 0.5, and
shift size 3 for S, whose config file is named "shift5" but sets 3); the same UPerHead and auxiliary FCN head as
UperNet-Swin (512 channels, pool scales 1, 2, 3, 6; aux on stage 3, 256 channels, loss weight 0.4 in the recipes).
"""

from __future__ import annotations

from dataclasses import dataclass

from seglab.backbones.asmlp import ASMLP, ASMLP_CONFIGS, ASMLP_SEG_OPTIONS
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec
from seglab.models.upernet import UperNetOptions, upernet


@dataclass(frozen=True)
class UperNetASMLPOptions(UperNetOptions):
    """Constructor options of `upernet_asmlp_*`: the UperNet head options and AS-MLP's.

    `drop_path_rate` and `shift_size` default (None) to the variant's segmentation config (`ASMLP_SEG_OPTIONS`).
    """

    drop_path_rate: float | None = None
    shift_size: int | None = None


@dataclass(frozen=True)
class UperNetASMLPVariant:
    """One UperNet-AS-MLP: the paper's parameter count in millions (ADE20K, 150 classes, with the auxiliary head)."""

    published_params_m: float


UPERNET_ASMLP_VARIANTS: dict[str, UperNetASMLPVariant] = {
    "t": UperNetASMLPVariant(60.0), "s": UperNetASMLPVariant(81.0), "b": UperNetASMLPVariant(121.0),
}


def build_upernet_asmlp(variant: str, options: UperNetASMLPOptions) -> EncoderDecoder:
    """UperNet-AS-MLP-`variant`."""
    seg = ASMLP_SEG_OPTIONS[variant]
    backbone = ASMLP(
        ASMLP_CONFIGS[variant],
        in_channels=options.in_channels,
        drop_path_rate=seg["drop_path_rate"] if options.drop_path_rate is None else options.drop_path_rate,
        shift_size=seg.get("shift_size") if options.shift_size is None else options.shift_size,
    )
    return upernet(backbone, options)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"upernet_asmlp_{_variant}",
        build=build_upernet_asmlp,
        variant=_variant,
        options=UperNetASMLPOptions,
        published_params_m=_spec.published_params_m,
        description=f"UperNet + AS-MLP-{_variant.upper()}, auxiliary FCN head on stage 3",
    )
    for _variant, _spec in UPERNET_ASMLP_VARIANTS.items()
)
