"""UperNet with a Swin Transformer backbone, as in the Swin segmentation results (arXiv:2103.14030, Table 3).

Backbone Swin-T/S/B/L (window 7; `window_size=12` for the 384-pretrained encoders), UPerHead with 512 channels and
pool scales 1, 2, 3, 6, and an auxiliary FCN head on stage 3 (256 channels, one conv, loss weight 0.4 in the
recipes: `loss.aux_weights: [0.4]`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from seglab.backbones.swin import SWIN_CONFIGS, SwinTransformer
from seglab.heads.fcn import FCNHead
from seglab.heads.uper import UPerHead
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec


@dataclass(frozen=True)
class UperNetOptions:
    """Head options shared by every UperNet model (defaults follow the Swin segmentation configs, which the AS-MLP
    and CycleMLP UperNet models reuse).

    `aux_head=False` drops the auxiliary FCN head (inference-only models; the published parameter counts include it).
    """

    num_classes: int = 150
    in_channels: int = 3
    drop_path_rate: float = 0.3
    head_channels: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    head_dropout: float = 0.1
    aux_head: bool = True
    aux_channels: int = 256
    align_corners: bool = False


@dataclass(frozen=True)
class UperNetSwinOptions(UperNetOptions):
    """Constructor options of `upernet_swin_*`: the UperNet head options and Swin's (window 12 for the
    384-pretrained encoders; `shrink_window=False` keeps the full window on maps smaller than it, as the Swin
    segmentation code and mmseg do, see `seglab.backbones.swin`)."""

    window_size: int | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    shrink_window: bool = True


@dataclass(frozen=True)
class UperNetSwinVariant:
    """One UperNet-Swin: the paper's parameter count in millions (ADE20K, 150 classes, with the auxiliary head;
    Swin-L: the paper's 22k 640x640 model)."""

    published_params_m: float


UPERNET_SWIN_VARIANTS: dict[str, UperNetSwinVariant] = {
    "t": UperNetSwinVariant(60.0), "s": UperNetSwinVariant(81.0), "b": UperNetSwinVariant(121.0),
    "l": UperNetSwinVariant(234.0),
}
AUX_IN_INDEX = 2  # the auxiliary FCN head reads stage 3 (stride 16)


def upernet(backbone: nn.Module, options: UperNetOptions) -> EncoderDecoder:
    """UPerHead (and the auxiliary FCN head on stage 3) on a four-stage backbone with `feature_info`."""
    channels = [info.channels for info in backbone.feature_info]
    head = UPerHead(channels, options.head_channels, options.num_classes, tuple(options.pool_scales),
                    options.head_dropout, options.align_corners)
    aux = []
    if options.aux_head:
        aux.append(FCNHead(channels[AUX_IN_INDEX], options.aux_channels, options.num_classes, in_index=AUX_IN_INDEX,
                           num_convs=1, concat_input=False, dropout=options.head_dropout))
    return EncoderDecoder(backbone, head, num_classes=options.num_classes, output_stride=4, aux_heads=aux,
                          align_corners=options.align_corners)


def build_upernet_swin(variant: str, options: UperNetSwinOptions) -> EncoderDecoder:
    """UperNet-Swin-`variant`."""
    backbone = SwinTransformer(
        SWIN_CONFIGS[variant],
        in_channels=options.in_channels,
        drop_path_rate=options.drop_path_rate,
        drop_rate=options.drop_rate,
        attn_drop_rate=options.attn_drop_rate,
        window_size=options.window_size,
        shrink_window=options.shrink_window,
    )
    return upernet(backbone, options)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"upernet_swin_{_variant}",
        build=build_upernet_swin,
        variant=_variant,
        options=UperNetSwinOptions,
        published_params_m=_spec.published_params_m,
        description=f"UperNet + Swin-{_variant.upper()} (window 7), auxiliary FCN head on stage 3",
    )
    for _variant, _spec in UPERNET_SWIN_VARIANTS.items()
)
