"""SegViT: a plain ViT with the Attention-to-Mask (ATM) decoder, and its Shrunk structure (arXiv:2210.05844).

Paper: "SegViT: Semantic Segmentation with Plain Vision Transformers", Zhang et al., NeurIPS 2022. Original code:
zbwxp/SegVit (configs `_base_/models/seg_vit-b16.py`, `segvit/segvit_vit-l_jax_640x640_160k_ade20k.py`,
`segvit/shrink/segvit_vit-l_jax_shrink8_tpnatm.py`).

- `segvit_vit_b`: ViT-B/16 (outputs of blocks 5, 7, 11; drop path 0.1; 512 crops) + `ATMHead` (384 wide, 12 heads).
- `segvit_vit_l`: ViT-L/16 (blocks 7, 15, 23; drop path 0.3; 640 crops) + `ATMHead` (512 wide, 16 heads).
- `segvit_shrunk_vit_l`: ViT-L/16 with query-based downsampling at block 8 (outputs of blocks 7 and 23, strides 16
  and 32) + `TPNATMHead` (query-based upsampling to the 40 x 40 grid of a 640 crop, then `ATMSingleHead`).

Every backbone runs without the class token (it gets its position embedding and leaves before block 0), has no final
norm and resamples its position embedding bicubically. The JAX-pretrained ViT-L weights expect inputs normalised with
mean = std = 127.5 (RGB). `forward` returns SegViT's semantic scores `softmax(class)[:K] x sigmoid(mask)` at the input
size (`output_stride` 1; inference softmaxes them like logits, as mmseg does); `forward_train` returns the head's
per-output class logits and masks and `training_loss` applies `ATMLoss` to them (the trainer calls it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from seglab.backbones.vit import VIT_CONFIGS, VisionTransformer
from seglab.heads.atm import ATMHead, TPNATMHead, semantic_scores, upsample_masks
from seglab.losses.atm import ATMLoss
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.spec import ModelSpec


class SegViT(EncoderDecoder):
    """A ViT backbone and an ATM head (`ATMHead` or `TPNATMHead`) predicting one (class, mask) pair per class query.

    Args:
        backbone: a `VisionTransformer`.
        decode_head: maps the backbone outputs to (class logits (L, B, K, K + 1), masks (L, B, K, h, w)).
        num_classes: classes (K).
        loss: the set loss of `training_loss`.
        patch_size: the backbone's patch size, the multiple it pads inputs to.
    """

    def __init__(
        self, backbone: VisionTransformer, decode_head: ATMHead | TPNATMHead, num_classes: int, loss: ATMLoss,
        patch_size: int,
    ) -> None:
        super().__init__(backbone, decode_head, num_classes=num_classes, output_stride=1)
        self.criterion = loss
        self.patch_size = patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, K, H, W) semantic scores of the last decoder output."""
        class_logits, masks = self.decode_head(self.backbone(images))
        return semantic_scores(class_logits[-1], upsample_masks(masks[-1], images.shape[-2:], self.patch_size))

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """(B, C, H, W) images -> the head's (class logits (L, B, K, K + 1), masks (L, B, K, h, w)), the prediction
        last and the deep-supervision outputs before it; pass them to `training_loss`."""
        return self.decode_head(self.backbone(images))

    def training_loss(
        self, outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, ignore_index: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """`ATMLoss` of `forward_train`'s outputs against (B, H, W) labels of the same images; (loss, parts)."""
        class_logits, masks = outputs
        return self.criterion(class_logits, masks, labels, ignore_index)


@dataclass(frozen=True)
class SegViTVariant:
    """One published SegViT model.

    Args:
        backbone: `VIT_CONFIGS` key.
        out_indices: 0-based blocks whose outputs the head reads.
        head_dim: decoder width (ViT width // 2).
        head_heads: decoder attention heads.
        drop_path_rate: the backbone's stochastic depth.
        img_size: training crop: the position-embedding grid and, for Shrunk, the upsampling-query grid (/ 16).
        shrink_index: the query-based downsampling block (Shrunk), or None.
        published_gflops: the README's GFLOPs at the ADE20K crop.
    """

    backbone: str
    out_indices: tuple[int, ...]
    head_dim: int
    head_heads: int
    drop_path_rate: float
    img_size: int
    shrink_index: int | None
    published_gflops: float


SEGVIT_VARIANTS: dict[str, SegViTVariant] = {
    "vit_b": SegViTVariant("b", (5, 7, 11), 384, 12, 0.1, 512, None, 120.9),
    "vit_l": SegViTVariant("l", (7, 15, 23), 512, 16, 0.3, 640, None, 637.9),
    "shrunk_vit_l": SegViTVariant("l", (7, 23), 512, 16, 0.3, 640, 8, 373.5),
}


@dataclass(frozen=True)
class SegViTOptions:
    """Constructor options of `segvit_*` (defaults follow the official configs).

    `img_size=None` and `drop_path_rate=None` take the variant's. `query_mode` (Shrunk only) decides what happens at
    inputs whose stride-16 grid is not the training crop's: "resample" the upsampling queries to that grid, or keep
    the trained grid ("fixed", the original's behaviour); see `TPNATMHead`.

    `vit` swaps the encoder for another `VIT_CONFIGS` variant (e.g. "t" for the shapes runs; not a published model):
    the head then is width // 2 wide with the encoder's head count, and `out_indices` (and, for Shrunk,
    `shrink_index`) must name blocks of that encoder. None: the variant's.
    """

    num_classes: int = 150
    in_channels: int = 3
    vit: str | None = None
    out_indices: tuple[int, ...] | None = None
    shrink_index: int | None = None
    img_size: int | None = None
    drop_path_rate: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    head_layers: int = 3
    head_dropout: float = 0.1
    query_mode: str = "resample"
    cls_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    no_object_weight: float = 0.1


def build_segvit(variant: str, options: SegViTOptions) -> SegViT:
    """SegViT-`variant` (a `SEGVIT_VARIANTS` key)."""
    spec = SEGVIT_VARIANTS[variant]
    if options.vit is not None and options.vit != spec.backbone:
        if options.vit not in VIT_CONFIGS:
            raise ValueError(f"segvit_{variant}: unknown vit {options.vit!r}; valid: {', '.join(VIT_CONFIGS)}")
        config = VIT_CONFIGS[options.vit]
        if options.out_indices is None or (spec.shrink_index is not None and options.shrink_index is None):
            raise ValueError(f"segvit_{variant} with vit={options.vit!r}: give `out_indices`"
                             + (" and `shrink_index`" if spec.shrink_index is not None else "")
                             + f" for its {config.depth} blocks")
        spec = replace(spec, backbone=options.vit, head_dim=config.embed_dim // 2, head_heads=config.num_heads)
    config = VIT_CONFIGS[spec.backbone]
    if options.out_indices is not None:
        spec = replace(spec, out_indices=tuple(options.out_indices))
    if options.shrink_index is not None:
        if spec.shrink_index is None:
            raise ValueError(f"segvit_{variant} has no query-based downsampling; `shrink_index` is for Shrunk models")
        spec = replace(spec, shrink_index=options.shrink_index)
    img_size = options.img_size or spec.img_size
    backbone = VisionTransformer(
        config,
        in_channels=options.in_channels,
        img_size=img_size,
        out_indices=spec.out_indices,
        with_cls_token=False,
        final_norm=False,
        interpolate_mode="bicubic",
        drop_path_rate=spec.drop_path_rate if options.drop_path_rate is None else options.drop_path_rate,
        drop_rate=options.drop_rate,
        attn_drop_rate=options.attn_drop_rate,
        shrink_index=spec.shrink_index,
    )
    channels = [info.channels for info in backbone.feature_info]
    if spec.shrink_index is None:
        head = ATMHead(channels, options.num_classes, spec.head_dim, spec.head_heads, options.head_layers,
                       options.head_dropout)
    else:
        grid = img_size // config.patch_size
        head = TPNATMHead(channels, options.num_classes, spec.head_dim, spec.head_heads, (grid, grid),
                          options.head_layers, options.head_dropout, options.query_mode)
    loss = ATMLoss(options.num_classes, cls_weight=options.cls_weight, mask_weight=options.mask_weight,
                   dice_weight=options.dice_weight, no_object_weight=options.no_object_weight,
                   patch_size=config.patch_size)
    return SegViT(backbone, head, options.num_classes, loss, config.patch_size)


_DESCRIPTIONS = {
    "vit_b": "SegViT: ViT-B/16 (blocks 5, 7, 11) + ATM head (384 wide, 12 heads), 512 crops",
    "vit_l": "SegViT: ViT-L/16 (blocks 7, 15, 23) + ATM head (512 wide, 16 heads), 640 crops",
    "shrunk_vit_l": "SegViT Shrunk: ViT-L/16 with query downsampling at block 8 (blocks 7, 23) + TPN-ATM head "
                    "(query upsampling), 640 crops",
}

MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"segvit_{_variant}",
        build=build_segvit,
        variant=_variant,
        options=SegViTOptions,
        published_params_m=None,  # the README gives GFLOPs only
        description=_DESCRIPTIONS[_variant],
    )
    for _variant in SEGVIT_VARIANTS
)
