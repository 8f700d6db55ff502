"""SegNeXt = MSCAN encoder + light Hamburger head, variants T/S/B/L (arXiv:2209.08575)."""

from __future__ import annotations

from dataclasses import dataclass

from seglab.backbones.mscan import MSCAN, MSCAN_CONFIGS
from seglab.heads.ham import LightHamHead
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec


@dataclass(frozen=True)
class SegNeXtOptions:
    """Constructor options shared by every SegNeXt variant (defaults follow the official code).

    `None` takes the variant's published value. `ham_rank` is the NMF rank `MD_R`: the official repo uses 16 for
    T/S and its code default 64 for B/L, mmsegmentation 1.x uses 16 for all four (its converter sets it).
    `ham_eval_bases="random"` reproduces the official evaluation, which draws new NMF bases at every forward;
    the default "fixed" makes evaluation deterministic (see `seglab.heads.ham`).
    """

    num_classes: int = 150
    in_channels: int = 3
    drop_path_rate: float | None = None
    drop_rate: float = 0.0
    layer_scale_init: float = 1e-2
    head_channels: int | None = None
    ham_rank: int | None = None
    ham_train_steps: int = 6
    ham_eval_steps: int = 7
    ham_eval_bases: str = "fixed"
    ham_seed: int = 0
    head_dropout: float = 0.1
    align_corners: bool = False


@dataclass(frozen=True)
class SegNeXtVariant:
    """Head settings of one variant and its published size."""

    head_channels: int  # ham_channels = channels
    ham_rank: int  # MD_R of the official repo
    published_params_m: float  # official README, ADE20K (150 classes)


SEGNEXT_VARIANTS: dict[str, SegNeXtVariant] = {
    "t": SegNeXtVariant(head_channels=256, ham_rank=16, published_params_m=4.0),
    "s": SegNeXtVariant(head_channels=256, ham_rank=16, published_params_m=14.0),
    "b": SegNeXtVariant(head_channels=512, ham_rank=64, published_params_m=28.0),
    "l": SegNeXtVariant(head_channels=1024, ham_rank=64, published_params_m=49.0),
}
HEAD_IN_INDEX = (1, 2, 3)  # stages 2-4: the stride-4 features are not used by the head


def build_segnext(variant: str, options: SegNeXtOptions) -> EncoderDecoder:
    """SegNeXt-`variant` from its MSCAN config and head settings."""
    config, spec = MSCAN_CONFIGS[variant], SEGNEXT_VARIANTS[variant]
    backbone = MSCAN(
        config,
        in_channels=options.in_channels,
        drop_rate=options.drop_rate,
        drop_path_rate=options.drop_path_rate,
        layer_scale_init=options.layer_scale_init,
    )
    channels = spec.head_channels if options.head_channels is None else options.head_channels
    head = LightHamHead(
        in_channels=[config.embed_dims[i] for i in HEAD_IN_INDEX],
        in_index=HEAD_IN_INDEX,
        ham_channels=channels,
        channels=channels,
        num_classes=options.num_classes,
        rank=spec.ham_rank if options.ham_rank is None else options.ham_rank,
        train_steps=options.ham_train_steps,
        eval_steps=options.ham_eval_steps,
        eval_bases=options.ham_eval_bases,
        seed=options.ham_seed,
        dropout=options.head_dropout,
        align_corners=options.align_corners,
    )
    return EncoderDecoder(backbone, head, num_classes=options.num_classes, output_stride=8,
                          align_corners=options.align_corners)


MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"segnext_{_variant}",
        build=build_segnext,
        variant=_variant,
        options=SegNeXtOptions,
        published_params_m=_spec.published_params_m,
        description=f"SegNeXt-{_variant.upper()}: MSCAN-{_variant.upper()} + light Hamburger head "
                f"({_spec.head_channels} channels, NMF rank {_spec.ham_rank})",
    )
    for _variant, _spec in SEGNEXT_VARIANTS.items()
)
