"""MaskFormer (arXiv:2107.06278) on ResNet-50/101 and Swin-T/S/B/L backbones, the ADE20K semantic models of the paper.

Defaults follow `configs/ade20k-150/maskformer_R50_bs16_160k.yaml` of facebookresearch/MaskFormer: 100 queries, width
256, 8 heads, FFN 2048, 6 decoder layers (no encoder layer), dropout 0.1, deep supervision, pixel decoder 256/256 with
GroupNorm; loss weights class 1, mask (focal) 20, dice 1, no-object 0.1; probabilistic semantic inference.

Backbones. ResNet: torchvision's ResNet-50/101 (stride on the 3x3 conv, as detectron2's `STRIDE_IN_1X1: False` that the
MaskFormer configs set; BN layers are ordinary trainable BatchNorm, where detectron2's default `RESNETS.NORM` is
FrozenBN). Swin: seglab's `SwinTransformer` with its per-stage output norms (drop path 0.3 as in the MaskFormer Swin
configs; window 7 for Swin-T/S and 12 for Swin-B/L, whose paper models start from 384-pretrained encoders; the
`window_size` option overrides it).

`forward(images)` returns the semantic scores (B, K, H/4, W/4) (probabilities summed over queries, not logits: their
argmax is the prediction); `forward_train(images)` the raw class and mask logits of every decoder layer; the trainer
calls `training_loss` on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seglab.backbones.resnet import ResNet
from seglab.backbones.swin import SWIN_CONFIGS, SwinTransformer
from seglab.heads.maskformer import MaskFormerHead, semantic_scores
from seglab.losses.maskformer import MaskFormerLoss
from seglab.models.spec import ModelSpec
from seglab.pretrained_files import PretrainedMixin

# detectron2 pads every batch to a multiple of this (`MODEL.MASK_FORMER.SIZE_DIVISIBILITY` of the official configs)
OFFICIAL_SIZE_DIVISIBILITY = 32


@dataclass(frozen=True)
class MaskFormerOptions:
    """Constructor options shared by every MaskFormer model.

    `deep_supervision=False` trains on the final output only (`forward_train` then runs the decoder's last output).
    `official_inference=True` makes `forward` compute the official test-time output (facebookresearch/MaskFormer's
    `MaskFormer.forward` with detectron2's `ImageList`): the image zero-padded right / bottom to a multiple of 32 (the
    transformer gets no padding mask), the mask logits upsampled bilinearly to the padded size *before* the sigmoid,
    the scores cropped to the image, returned at the input size (`output_stride` 1). Default: scores at stride 4 of the
    unpadded input (see the model docs for the difference).
    """

    num_classes: int = 150
    in_channels: int = 3
    conv_dim: int = 256
    mask_dim: int = 256
    hidden_dim: int = 256
    num_queries: int = 100
    num_heads: int = 8
    ffn_dim: int = 2048
    dec_layers: int = 6
    dropout: float = 0.1
    deep_supervision: bool = True
    class_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    no_object_weight: float = 0.1
    official_inference: bool = False


@dataclass(frozen=True)
class MaskFormerSwinOptions(MaskFormerOptions):
    """Options of `maskformer_swin_*`: the MaskFormer options and Swin's (`shrink_window=False` keeps the full window
    on maps smaller than it, as the official MaskFormer Swin does; see `seglab.backbones.swin`)."""

    drop_path_rate: float = 0.3
    window_size: int | None = None
    shrink_window: bool = True


class MaskFormer(PretrainedMixin, nn.Module):
    """A backbone and a `MaskFormerHead`, with MaskFormer's set loss.

    Args:
        backbone: returns four NCHW maps (strides 4 to 32) and has `feature_info`.
        decode_head: the MaskFormer head.
        num_classes: classes predicted.
        loss: the set loss used by `training_loss`.
        deep_supervision: whether `forward_train` returns every decoder layer's output.
        official_inference: `forward` reproduces the official test-time computation (see `MaskFormerOptions`).
    """

    def __init__(self, backbone: nn.Module, decode_head: MaskFormerHead, num_classes: int, loss: MaskFormerLoss,
                 deep_supervision: bool = True, official_inference: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_heads = nn.ModuleList()
        self.num_classes = num_classes
        self.official_inference = official_inference
        self.output_stride = 1 if official_inference else 4
        self.loss = loss
        self.deep_supervision = deep_supervision
        self.align_corners = False  # the scores are resized to the image as the official code does

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> semantic scores (B, K, H/4, W/4), or (B, K, H, W) with `official_inference`."""
        if not self.official_inference:
            return self.decode_head(self.backbone(images))
        height, width = images.shape[-2:]
        # NOTE: detectron2's ImageList pads to the backbone's `size_divisibility` 32; the padding is not masked
        padded = F.pad(images, (0, (-width) % OFFICIAL_SIZE_DIVISIBILITY, 0, (-height) % OFFICIAL_SIZE_DIVISIBILITY))
        class_logits, mask_logits = self.decode_head.forward_raw(self.backbone(padded), all_layers=False)
        # (B, Q, H/4, W/4) -> (B, Q, Hp, Wp): the official order, resize before the sigmoid
        masks = F.interpolate(mask_logits[-1], size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return semantic_scores(class_logits[-1], masks)[..., :height, :width]

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> class logits (L, B, Q, K + 1) and mask logits (L, B, Q, H/4, W/4), the last entry being
        the final output (L = decoder layers with deep supervision, else 1)."""
        return self.decode_head.forward_raw(self.backbone(images), all_layers=self.deep_supervision)

    def training_loss(self, outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                      ignore_index: int = 255) -> tuple[torch.Tensor, dict[str, float]]:
        """MaskFormer's set loss of `forward_train`'s outputs against a (B, H, W) label map."""
        class_logits, mask_logits = outputs
        return self.loss(class_logits, mask_logits, labels, ignore_index)


def maskformer(backbone: nn.Module, options: MaskFormerOptions) -> MaskFormer:
    """A MaskFormer head and loss on a four-stage backbone with `feature_info`."""
    channels = [info.channels for info in backbone.feature_info]
    head = MaskFormerHead(channels, options.num_classes, conv_dim=options.conv_dim, mask_dim=options.mask_dim,
                          hidden_dim=options.hidden_dim, num_queries=options.num_queries, num_heads=options.num_heads,
                          ffn_dim=options.ffn_dim, dec_layers=options.dec_layers, dropout=options.dropout)
    loss = MaskFormerLoss(options.num_classes, class_weight=options.class_weight, mask_weight=options.mask_weight,
                          dice_weight=options.dice_weight, no_object_weight=options.no_object_weight)
    return MaskFormer(backbone, head, options.num_classes, loss, options.deep_supervision, options.official_inference)


def build_maskformer_resnet(depth: int, options: MaskFormerOptions) -> MaskFormer:
    """MaskFormer-R`depth`."""
    return maskformer(ResNet(depth, in_channels=options.in_channels), options)


def build_maskformer_swin(variant: str, options: MaskFormerSwinOptions) -> MaskFormer:
    """MaskFormer-Swin-`variant`."""
    window = MASKFORMER_SWIN_VARIANTS[variant].window if options.window_size is None else options.window_size
    backbone = SwinTransformer(SWIN_CONFIGS[variant], in_channels=options.in_channels,
                               drop_path_rate=options.drop_path_rate, window_size=window,
                               shrink_window=options.shrink_window)
    return maskformer(backbone, options)


@dataclass(frozen=True)
class MaskFormerVariant:
    """One MaskFormer: the paper's parameter count in millions (ADE20K, 150 classes) and, for Swin backbones, the
    default attention window (the paper's Swin-B/L models start from the 384-pretrained, window-12 encoders)."""

    published_params_m: float
    window: int | None = None


MASKFORMER_RESNET_VARIANTS: dict[int, MaskFormerVariant] = {50: MaskFormerVariant(41.0), 101: MaskFormerVariant(60.0)}
MASKFORMER_SWIN_VARIANTS: dict[str, MaskFormerVariant] = {
    "t": MaskFormerVariant(42.0, window=7), "s": MaskFormerVariant(63.0, window=7),
    "b": MaskFormerVariant(102.0, window=12), "l": MaskFormerVariant(212.0, window=12),
}

MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        f"maskformer_r{_depth}",
        build=build_maskformer_resnet,
        variant=_depth,
        options=MaskFormerOptions,
        published_params_m=_spec.published_params_m,
        description=f"MaskFormer + ResNet-{_depth} (torchvision), 100 queries, 6 decoder layers",
    )
    for _depth, _spec in MASKFORMER_RESNET_VARIANTS.items()
) + tuple(
    ModelSpec(
        f"maskformer_swin_{_variant}",
        build=build_maskformer_swin,
        variant=_variant,
        options=MaskFormerSwinOptions,
        published_params_m=_spec.published_params_m,
        description=f"MaskFormer + Swin-{_variant.upper()} (window {_spec.window}), 100 queries, "
                f"6 decoder layers",
    )
    for _variant, _spec in MASKFORMER_SWIN_VARIANTS.items()
)

