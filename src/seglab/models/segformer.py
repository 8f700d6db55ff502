"""SegFormer = MiT encoder + All-MLP decoder, variants B0-B5 (arXiv:2105.15203)."""

from __future__ import annotations

from dataclasses import dataclass

from seglab.backbones.mit import MIT_CONFIGS, MixVisionTransformer
from seglab.heads.segformer import SegFormerHead
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec


@dataclass(frozen=True)
class SegFormerOptions:
    """Constructor options shared by every SegFormer variant (defaults follow the official code).

    `head_channels=None` takes the variant's published width. The eps and `head_stage_norm_act` options
    exist so that checkpoints trained by other codebases reproduce their outputs (converters set them).
    `token_merging` is SegFormer++'s opt-in speed mode ("hq", "fast", "n2d"; `seglab.layers.token_merging`): an
    approximation of the attention with the same parameters, see docs/benchmarks.md for its speed and accuracy.
    """

    num_classes: int = 150
    in_channels: int = 3
    head_channels: int | None = None
    drop_path_rate: float = 0.1
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    head_dropout: float = 0.1
    align_corners: bool = False
    norm_eps: float = 1e-6
    patch_norm_eps: float = 1e-5
    sr_norm_eps: float = 1e-5
    head_stage_norm_act: bool = False
    token_merging: str | None = None


@dataclass(frozen=True)
class SegFormerVariant:
    """One SegFormer: the All-MLP decoder width and the paper's parameter count in millions (150 classes)."""

    head_channels: int
    published_params_m: float


SEGFORMER_VARIANTS: dict[str, SegFormerVariant] = {
    "b0": SegFormerVariant(256, 3.8),
    "b1": SegFormerVariant(256, 13.7),
    "b2": SegFormerVariant(768, 27.5),
    "b3": SegFormerVariant(768, 47.3),
    "b4": SegFormerVariant(768, 64.1),
    "b5": SegFormerVariant(768, 84.7),
}


def build_segformer(variant: str, options: SegFormerOptions) -> EncoderDecoder:
    """SegFormer-`variant` from its MiT config and head width."""
    config = MIT_CONFIGS[variant]
    backbone = MixVisionTransformer(
        config,
        in_channels=options.in_channels,
        drop_rate=options.drop_rate,
        attn_drop_rate=options.attn_drop_rate,
        drop_path_rate=options.drop_path_rate,
        norm_eps=options.norm_eps,
        patch_norm_eps=options.patch_norm_eps,
        sr_norm_eps=options.sr_norm_eps,
        token_merging=options.token_merging,
    )
    head = SegFormerHead(
        in_channels=config.embed_dims,
        channels=options.head_channels or SEGFORMER_VARIANTS[variant].head_channels,
        num_classes=options.num_classes,
        dropout=options.head_dropout,
        align_corners=options.align_corners,
        stage_norm_act=options.head_stage_norm_act,
    )
    return EncoderDecoder(backbone, head, num_classes=options.num_classes, output_stride=4,
                          align_corners=options.align_corners)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"segformer_{_variant}",
        build=build_segformer,
        variant=_variant,
        options=SegFormerOptions,
        published_params_m=_spec.published_params_m,
        description=f"SegFormer-{_variant.upper()}: MiT-{_variant.upper()} + All-MLP head "
                    f"({_spec.head_channels} channels)",
    )
    for _variant, _spec in SEGFORMER_VARIANTS.items()
)
