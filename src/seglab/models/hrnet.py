"""FCN-HRNetV2 = HRNet backbone + HRNetV2 resize-concat head, variants W18-Small-v1/v2, W18, W32, W48
(arXiv:1904.04514, arXiv:1908.07919)."""

from __future__ import annotations

from dataclasses import dataclass

from seglab.backbones.hrnet import HRNET_CONFIGS, HRNet
from seglab.heads.hrnetv2 import HRNetV2Head
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec


@dataclass(frozen=True)
class HRNetOptions:
    """Constructor options shared by every FCN-HRNetV2 variant (defaults follow the official segmentation code).

    The defaults (bilinear fuse upsampling, `align_corners=True` in the fuse and the head, a bias on the head's fuse
    conv, BN momentum 0.1) are those of the official HRNet-Semantic-Segmentation code (HRNet-OCR branch, whose
    README states `align_corners=True`; older versions of the code use False); mmseg-trained weights use
    `align_corners=False`, no head conv bias and `fuse_upsample="bilinear_scale"` (mmseg's two-step bilinear fuse
    upsampling), timm ImageNet weights `fuse_upsample="nearest"` (converters set these). `neck` selects the
    representation the head sees: `none` (the four branches; the head concatenates them, which is HRNetV2), `v1`
    (highest resolution only), `v2` (concatenated in the backbone) or `v2p` (V2 plus its pooled pyramid; the FCN
    head reads the stride-4 level only, the pooled copies being for pyramid heads).
    `num_classes` defaults to Cityscapes' 19, the setting of the published parameter counts.
    """

    num_classes: int = 19
    in_channels: int = 3
    bn_momentum: float = 0.1
    fuse_upsample: str = "bilinear"
    align_corners: bool = True
    neck: str = "none"
    head_dropout: float = 0.0
    head_conv_bias: bool = True


@dataclass(frozen=True)
class HRNetVariant:
    """Display name and published size of one variant."""

    title: str
    published_params_m: float | None  # official README, Cityscapes (19 classes); None where none is published


HRNET_VARIANTS: dict[str, HRNetVariant] = {
    "w18s_v1": HRNetVariant("HRNetV2-W18-Small-v1", 1.5),
    "w18s": HRNetVariant("HRNetV2-W18-Small-v2", 3.9),
    "w18": HRNetVariant("HRNetV2-W18", None),
    "w32": HRNetVariant("HRNetV2-W32", None),
    "w48": HRNetVariant("HRNetV2-W48", 65.8),
}


def build_fcn_hrnetv2(variant: str, options: HRNetOptions) -> EncoderDecoder:
    """FCN-HRNetV2-`variant`: the HRNet stage config of `variant` and the resize-concat head."""
    backbone = HRNet(
        HRNET_CONFIGS[variant],
        in_channels=options.in_channels,
        bn_momentum=options.bn_momentum,
        fuse_upsample=options.fuse_upsample,
        align_corners=options.align_corners,
        neck=options.neck,
    )
    head = HRNetV2Head(
        in_channels=[f.channels for f in backbone.feature_info],
        num_classes=options.num_classes,
        in_index=(0,) if options.neck == "v2p" else None,
        align_corners=options.align_corners,
        dropout=options.head_dropout,
        conv_bias=options.head_conv_bias,
        bn_momentum=options.bn_momentum,
    )
    return EncoderDecoder(backbone, head, num_classes=options.num_classes, output_stride=4,
                          align_corners=options.align_corners)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"fcn_hrnetv2_{_variant}",
        build=build_fcn_hrnetv2,
        variant=_variant,
        options=HRNetOptions,
        published_params_m=_spec.published_params_m,
        description=f"FCN-{_spec.title}: HRNet-{_variant.upper()} + HRNetV2 resize-concat head",
    )
    for _variant, _spec in HRNET_VARIANTS.items()
)
