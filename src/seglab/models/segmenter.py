"""Segmenter: a plain ViT encoder with a mask-transformer or linear decoder (arXiv:2105.05633).

Encoder: ViT-T/S/B/L with 16x16 patches, the class token kept through the blocks, the final LayerNorm on the last
block, bicubic position-embedding resampling and stochastic depth 0.1, its position embedding trained for the recipe's
crop (512; 640 for ViT-L). Decoder: `MaskTransformerHead` (2 blocks, the encoder's width and heads, stochastic depth
0.1) or `LinearHead`. Logits at stride 16. Defaults follow mmsegmentation's `configs/_base_/models/
segmenter_vit-b16_mask.py` and `configs/segmenter/*` (the official repository trains the mask transformer with
dropout 0.1 and no stochastic depth, and its LayerNorms use eps 1e-5: `seglab.convert.segmenter` sets those).
"""

from __future__ import annotations

from dataclasses import dataclass

from seglab.backbones.vit import VIT_CONFIGS, VisionTransformer
from seglab.heads.segmenter import LinearHead, MaskTransformerHead
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec


@dataclass(frozen=True)
class SegmenterLinearOptions:
    """Constructor options of `segmenter_vit_*_linear`: the ViT encoder's.

    `img_size=None` takes the variant's recipe crop (`SEGMENTER_VARIANTS`); it sets the position embedding's grid.
    `norm_eps` is the encoder's LayerNorm eps (1e-6 as in timm and mmseg; 1e-5 in the official Segmenter code).
    `patch_bias=False` drops the patch-embedding conv's bias, as mmseg 1.x's ViT (the converter sets it).
    """

    num_classes: int = 150
    in_channels: int = 3
    img_size: int | tuple[int, int] | None = None
    drop_path_rate: float = 0.1
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    norm_eps: float = 1e-6
    interpolate_mode: str = "bicubic"
    patch_bias: bool = True


@dataclass(frozen=True)
class SegmenterOptions(SegmenterLinearOptions):
    """Constructor options of `segmenter_vit_*`: the encoder's and the mask transformer's (`head_*`)."""

    head_layers: int = 2
    head_drop_path_rate: float = 0.1
    head_dropout: float = 0.0
    head_norm_eps: float = 1e-5


@dataclass(frozen=True)
class SegmenterVariant:
    """One Segmenter encoder: the crop of its ADE20K recipe, which sets the trained position-embedding grid (mmseg
    configs/segmenter), and whether the linear-decoder model is registered too."""

    crop: int
    linear: bool = False


SEGMENTER_VARIANTS: dict[str, SegmenterVariant] = {
    "t": SegmenterVariant(512), "s": SegmenterVariant(512, linear=True), "b": SegmenterVariant(512),
    "l": SegmenterVariant(640),
}
# NOTE: the paper (Table 1) gives the encoders' sizes only, not whole models': ViT-T 6M, S 22M, B 86M, L 307M; no
# `published_params_m` is registered (the unit tests check the encoders against these figures).
PAPER_ENCODER_PARAMS_M: dict[str, float] = {"t": 6.0, "s": 22.0, "b": 86.0, "l": 307.0}


def segmenter_encoder(variant: str, options: SegmenterLinearOptions) -> VisionTransformer:
    """The ViT-`variant` encoder of a Segmenter model: the last block's output (class token kept, final norm)."""
    config = VIT_CONFIGS[variant]
    return VisionTransformer(
        config,
        in_channels=options.in_channels,
        img_size=SEGMENTER_VARIANTS[variant].crop if options.img_size is None else options.img_size,
        out_indices=(config.depth - 1,),
        with_cls_token=True,
        final_norm=True,
        interpolate_mode=options.interpolate_mode,
        drop_path_rate=options.drop_path_rate,
        drop_rate=options.drop_rate,
        attn_drop_rate=options.attn_drop_rate,
        norm_eps=options.norm_eps,
        patch_bias=options.patch_bias,
    )


def build_segmenter(variant: str, options: SegmenterOptions) -> EncoderDecoder:
    """Segmenter-`variant` with the mask transformer."""
    backbone = segmenter_encoder(variant, options)
    config = VIT_CONFIGS[variant]
    head = MaskTransformerHead(
        config.embed_dim,
        options.num_classes,
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        num_layers=options.head_layers,
        mlp_ratio=4.0,
        drop_path_rate=options.head_drop_path_rate,
        dropout=options.head_dropout,
        norm_eps=options.head_norm_eps,
    )
    return EncoderDecoder(backbone, head, num_classes=options.num_classes, output_stride=config.patch_size)


def build_segmenter_linear(variant: str, options: SegmenterLinearOptions) -> EncoderDecoder:
    """Segmenter-`variant` with the linear decoder."""
    backbone = segmenter_encoder(variant, options)
    config = VIT_CONFIGS[variant]
    head = LinearHead(config.embed_dim, options.num_classes)
    return EncoderDecoder(backbone, head, num_classes=options.num_classes, output_stride=config.patch_size)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"segmenter_vit_{_variant}",
        build=build_segmenter,
        variant=_variant,
        options=SegmenterOptions,
        description=f"Segmenter: ViT-{_variant.upper()}/16 (position embedding for {_spec.crop}x{_spec.crop}) + mask "
                f"transformer (2 blocks)",
    )
    for _variant, _spec in SEGMENTER_VARIANTS.items()
) + tuple(
    ModelSpec(
        f"segmenter_vit_{_variant}_linear",
        build=build_segmenter_linear,
        variant=_variant,
        options=SegmenterLinearOptions,
        description=f"Segmenter: ViT-{_variant.upper()}/16 (position embedding for {_spec.crop}x{_spec.crop}) "
                f"+ linear decoder",
    )
    for _variant, _spec in SEGMENTER_VARIANTS.items() if _spec.linear
)

