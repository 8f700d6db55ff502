"""SETR: a ViT-L/16 encoder with the Naive, PUP or MLA decoder (arXiv:2012.15840), as in the mmsegmentation configs.

Backbone: ViT-L/16 (24 blocks, width 1024), LayerNorm eps 1e-6, no final norm, position embedding trained for
`img_size` (512 for ADE20K, 768 for Cityscapes, 480 for Pascal Context) and resampled bilinearly at other sizes.

- `setr_naive_vit_l`: blocks (9, 14, 19, 23) with the cls token; `SETRUPHead` on block 23 (1 conv 1x1, x4, logits at
  stride 4) and three auxiliary `SETRUPHead`s on blocks 9, 14, 19 (2 convs 1x1, x4 each).
- `setr_pup_vit_l`: the same layers; `SETRUPHead` with 4 convs 3x3, x2 each (stride 1), auxiliary heads with 2 convs
  3x3, x4 each.
- `setr_mla_vit_l`: blocks (5, 11, 17, 23) without the cls token; `MLANeck` (256) + `SETRMLAHead` (128 per level,
  stride 4) and four auxiliary 1x1 classifiers (FCN heads without convs) on the neck outputs.

The auxiliary heads are used by `forward_train` only; each recipe weights them 0.4 (`loss.aux_weights`). Options
reproduce the original fudan-zvg/SETR numerics where they differ (see `seglab.heads.setr`; `seglab.convert.setr`
returns them as overrides).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seglab.backbones.vit import VIT_CONFIGS, VisionTransformer
from seglab.heads.fcn import FCNHead
from seglab.heads.setr import MLANeck, SETRMLAHead, SETRUPHead
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec


@dataclass(frozen=True)
class SETROptions:
    """Backbone options shared by the SETR models.

    Args (fields):
        num_classes: output classes (ADE20K's 150 by default).
        in_channels: image channels.
        vit: the ViT variant (`seglab.backbones.vit.VIT_CONFIGS`); "l" in the paper.
        img_size: the square image size the position embedding was trained for (512 ADE20K, 768 Cityscapes).
        layers: 0-based ViT blocks whose outputs the heads read, increasing; the main head reads the last one
            (Naive/PUP) or all of them (MLA).
        with_cls_token: keep the cls token through the blocks (Naive/PUP) or drop it before block 0 (MLA).
        drop_rate, attn_drop_rate, drop_path_rate: backbone dropouts (all 0 in the ADE20K / Cityscapes recipes).
        align_corners: bilinear `align_corners` of the heads and of the final resize (False in both codes).
        aux_heads: build the auxiliary heads (training only; the published parameter counts include them).
        patch_bias: a bias on the ViT's patch-embedding conv (False for checkpoints trained with mmseg 1.x, whose ViT
            has none; the converter sets it).
    """

    num_classes: int = 150
    in_channels: int = 3
    vit: str = "l"
    img_size: int = 512
    layers: tuple[int, ...] = (9, 14, 19, 23)
    with_cls_token: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    align_corners: bool = False
    aux_heads: bool = True
    patch_bias: bool = True


@dataclass(frozen=True)
class SETRUPOptions(SETROptions):
    """Options of `setr_naive_vit_l` (the defaults) and `setr_pup_vit_l` (`SETRPUPOptions`).

    Args (fields):
        head_channels, num_convs, kernel_size, up_scale: the main `SETRUPHead` (on the last of `layers`).
        aux_channels, aux_num_convs, aux_kernel_size, aux_up_scale: the auxiliary `SETRUPHead`s.
        aux_in_index: which of `layers` (indices into it) carry an auxiliary head; the original PUP code adds one on
            the last layer too, `(0, 1, 2, 3)`.
    """

    head_channels: int = 256
    num_convs: int = 1
    kernel_size: int = 1
    up_scale: int = 4
    aux_channels: int = 256
    aux_num_convs: int = 2
    aux_kernel_size: int = 1
    aux_up_scale: int = 4
    aux_in_index: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class SETRPUPOptions(SETRUPOptions):
    """Options of `setr_pup_vit_l`: four 3x3 conv + x2 blocks in the main head, 3x3 convs in the auxiliary heads."""

    num_convs: int = 4
    kernel_size: int = 3
    up_scale: int = 2
    aux_kernel_size: int = 3


@dataclass(frozen=True)
class SETRMLAOptions(SETROptions):
    """Options of `setr_mla_vit_l`.

    Args (fields):
        neck_channels: `MLANeck` width (`mla_channels` 256).
        head_channels: per-level width of `SETRMLAHead` (`mlahead_channels` 128).
        up_scale: the head's per-level upsampling.
        classifier_kernel: 1 (mmseg) or 3 (original `cls`).
        up_align_corners: `align_corners` of the head's level upsampling when it differs from `align_corners`
            (True in the original code); None: the same.
    """

    layers: tuple[int, ...] = (5, 11, 17, 23)
    with_cls_token: bool = False
    neck_channels: int = 256
    head_channels: int = 128
    up_scale: int = 4
    classifier_kernel: int = 1
    up_align_corners: bool | None = None


@dataclass(frozen=True)
class SETRVariant:
    """One registered SETR model: its decoder, options type, and published size."""

    decoder: str  # "up" (Naive / PUP) or "mla"
    options: type
    title: str
    published_params_m: float


# The paper's parameter counts (M). Its convention is that of its Cityscapes models: 19 classes, a 768x768
# position-embedding grid, auxiliary heads included; these models count 306.73 / 318.47 / 310.68 M that way (within
# 0.35%; without the auxiliary heads PUP would be 2.7% short). At the defaults (150 classes, 512 grid, auxiliary heads):
# 305.56 / 317.29 / 309.57 M, within 0.32% (tests/unit/test_setr.py).
SETR_VARIANTS: dict[str, SETRVariant] = {
    "naive": SETRVariant("up", SETRUPOptions, "SETR-Naive", 305.67),
    "pup": SETRVariant("up", SETRPUPOptions, "SETR-PUP", 318.31),
    "mla": SETRVariant("mla", SETRMLAOptions, "SETR-MLA", 310.57),
}


class EncoderNeckDecoder(EncoderDecoder):
    """An `EncoderDecoder` with a neck between the backbone and the heads (the auxiliary heads read the neck too).

    Args:
        backbone: returns a list of NCHW maps.
        neck: maps that list to another list of NCHW maps.
        decode_head: maps the neck's list to logits.
        num_classes: classes predicted by the head.
        output_stride: stride of the head's logits relative to the input.
        aux_heads: optional extra heads on the neck's outputs, used only by `forward_train`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        decode_head: nn.Module,
        num_classes: int,
        output_stride: int,
        aux_heads: list[nn.Module] | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__(backbone, decode_head, num_classes=num_classes, output_stride=output_stride,
                         aux_heads=aux_heads, align_corners=align_corners)
        self.neck = neck

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.neck(self.backbone(images)))

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.neck(self.backbone(images))
        return self.decode_head(features), [head(features) for head in self.aux_heads]


def _backbone(options: SETROptions) -> VisionTransformer:
    if options.vit not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT variant {options.vit!r}; valid: {', '.join(VIT_CONFIGS)}")
    return VisionTransformer(
        VIT_CONFIGS[options.vit],
        in_channels=options.in_channels,
        img_size=options.img_size,
        out_indices=tuple(options.layers),
        with_cls_token=options.with_cls_token,
        final_norm=False,
        interpolate_mode="bilinear",
        drop_path_rate=options.drop_path_rate,
        drop_rate=options.drop_rate,
        attn_drop_rate=options.attn_drop_rate,
        norm_eps=1e-6,
        patch_bias=options.patch_bias,
    )


def _output_stride(backbone: VisionTransformer, upsampling: int) -> int:
    stride = backbone.feature_info[-1].stride
    if stride % upsampling:
        raise ValueError(f"the head upsamples x{upsampling}, which does not divide the backbone stride {stride}")
    return stride // upsampling


def build_setr_up(options: SETRUPOptions) -> EncoderDecoder:
    """SETR-Naive / SETR-PUP: ViT + `SETRUPHead` on the last of `options.layers` (+ auxiliary `SETRUPHead`s)."""
    backbone = _backbone(options)
    channels = backbone.feature_info[-1].channels
    head = SETRUPHead(channels, options.head_channels, options.num_classes, in_index=len(options.layers) - 1,
                      num_convs=options.num_convs, kernel_size=options.kernel_size, up_scale=options.up_scale,
                      align_corners=options.align_corners)
    aux = []
    if options.aux_heads:
        for index in options.aux_in_index:
            if index not in range(len(options.layers)):
                raise ValueError(f"aux_in_index {index} is not an index into layers {options.layers}")
            aux.append(SETRUPHead(channels, options.aux_channels, options.num_classes, in_index=index,
                                  num_convs=options.aux_num_convs, kernel_size=options.aux_kernel_size,
                                  up_scale=options.aux_up_scale, align_corners=options.align_corners))
    return EncoderDecoder(backbone, head, num_classes=options.num_classes,
                          output_stride=_output_stride(backbone, head.upsampling), aux_heads=aux,
                          align_corners=options.align_corners)


def build_setr_mla(options: SETRMLAOptions) -> EncoderNeckDecoder:
    """SETR-MLA: ViT + `MLANeck` + `SETRMLAHead` (+ a 1x1 auxiliary classifier on every neck output)."""
    backbone = _backbone(options)
    neck = MLANeck([info.channels for info in backbone.feature_info], options.neck_channels)
    head = SETRMLAHead(neck.out_channels, options.head_channels, options.num_classes, up_scale=options.up_scale,
                       classifier_kernel=options.classifier_kernel, align_corners=options.align_corners,
                       up_align_corners=options.up_align_corners)
    aux = []
    if options.aux_heads:
        aux = [FCNHead(c, c, options.num_classes, in_index=i, num_convs=0, dropout=0.0)
               for i, c in enumerate(neck.out_channels)]
    return EncoderNeckDecoder(backbone, neck, head, num_classes=options.num_classes,
                              output_stride=_output_stride(backbone, head.upsampling), aux_heads=aux,
                          align_corners=options.align_corners)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"setr_{_name}_vit_l",
        build=build_setr_up if _variant.decoder == "up" else build_setr_mla,
        options=_variant.options,
        published_params_m=_variant.published_params_m,
        description=f"{_variant.title}: ViT-L/16 (pos-embed for 512x512) + auxiliary heads",
    )
    for _name, _variant in SETR_VARIANTS.items()
)
