"""SETR's decoders: the naive / progressive upsampling head (`SETRUPHead`), the multi-level feature aggregation neck
(`MLANeck`) and the MLA head (`SETRMLAHead`).

Paper: "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with Transformers", Zheng et al.,
CVPR 2021, arXiv:2012.15840. Original code: fudan-zvg/SETR (MIT); the port we follow by default is
open-mmlab/mmsegmentation (`SETRUPHead`, `MLANeck`, `SETRMLAHead`, Apache-2.0), whose published configs and
checkpoints are the ones most people use. Written for seglab from the facts of both codes.

- Naive / PUP (`SETRUPHead`): a LayerNorm over the channels of one ViT layer's map (its own, not the backbone's),
  then `num_convs` blocks of [conv `kernel_size` (BN, ReLU), bilinear upsampling x `up_scale`], then a 1x1
  classifier. mmseg: Naive = 1 block, 1x1, x4 (logits at stride 4); PUP = 4 blocks, 3x3, x2 each (stride 1).
- MLA (`MLANeck` + `SETRMLAHead`): per input layer a LayerNorm and a 1x1 conv (BN, ReLU), cumulative sums from the
  deepest input down (m5 = p5, m4 = m5 + p4, ...), a 3x3 conv (BN, ReLU) on each sum; the head runs two 3x3 convs
  (BN, ReLU) per level, upsamples each x4 and concatenates them (shallow to deep) before the classifier.

Differences between the two codes, and how the options reproduce each (`seglab.convert.setr` sets them):

- Naive: the original upsamples the classifier's stride-16 logits to the image in one x16 step (`up_scale=1`, logits
  at stride 16); mmseg upsamples x4 before its classifier and again x4 afterwards, which is not the same function.
- PUP: the original applies its classifier before the last x2 upsampling, mmseg after it; a 1x1 conv commutes with
  bilinear upsampling (the interpolation weights sum to 1), so the two agree up to rounding.
- The original convs before a BatchNorm carry a bias, mmseg's do not; a bias before BN only shifts the BN's mean and
  is folded into `running_mean` by the converter (exact, in training too: batch statistics absorb it).
- MLA: the original upsamples the head's branches with `align_corners=True` (`up_align_corners`) and classifies with
  a 3x3 conv (`classifier_kernel=3`); mmseg uses the config's `align_corners` (False) and a 1x1 conv. mmseg's neck
  returns its outputs deepest first and its head concatenates them in that order; seglab keeps shallow to deep (the
  original's order) and the mmseg converter permutes the weights.
- The original heads assume square maps (they reshape tokens to `sqrt(N)` sides and upsample to `4 * width`); these
  work on any map size, as mmseg's do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import ConvNormAct


def _channel_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """A LayerNorm over the channels of an NCHW map (the tokens of a ViT layer), returned NCHW."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W) -> (B, H, W, C) -> (B, C, H, W)


def _upsample(x: torch.Tensor, scale: int, align_corners: bool) -> torch.Tensor:
    """Bilinear upsampling by an integer factor (identity for 1), as `nn.Upsample(scale_factor=scale)`."""
    if scale == 1:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=align_corners)


class SETRUPHead(nn.Module):
    """SETR's naive (Naive) and progressive upsampling (PUP) head on one ViT layer.

    Args:
        in_channels: channels of the selected backbone output (the ViT width).
        channels: width of the convs (256 in the mmseg configs and the original code).
        num_classes: output classes.
        in_index: which backbone output to read.
        num_convs: conv (BN, ReLU) + upsampling blocks.
        kernel_size: kernel of those convs, 1 or 3.
        up_scale: bilinear upsampling factor after every block; 1 leaves the map at the backbone's stride.
        align_corners: `align_corners` of the upsampling, and of the final resize done outside the model.
        dropout: Dropout2d rate before the classifier (0 in every SETR config).
        norm_eps: eps of the input LayerNorm.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        in_index: int = -1,
        num_convs: int = 1,
        kernel_size: int = 1,
        up_scale: int = 4,
        align_corners: bool = False,
        dropout: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"SETRUPHead kernel_size must be 1 or 3, got {kernel_size}")
        if num_convs < 1 or up_scale < 1:
            raise ValueError(f"SETRUPHead needs num_convs >= 1 and up_scale >= 1, got {num_convs} and {up_scale}")
        self.in_index = in_index
        self.up_scale = up_scale
        self.align_corners = align_corners
        self.norm = nn.LayerNorm(in_channels, eps=norm_eps)
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.ModuleList(ConvNormAct(widths[i], channels, kernel_size) for i in range(num_convs))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @property
    def upsampling(self) -> int:
        """Total upsampling factor of the head (logits stride = backbone stride / this)."""
        return self.up_scale ** len(self.convs)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = _channel_layer_norm(self.norm, features[self.in_index])
        for conv in self.convs:
            x = _upsample(conv(x), self.up_scale, self.align_corners)
        return self.classifier(self.dropout(x))


class MLANeck(nn.Module):
    """SETR's multi-level feature aggregation: LayerNorm, 1x1 lateral conv, top-down cumulative sum, 3x3 conv.

    All inputs have the same resolution (one ViT grid), so the top-down path adds without resizing.

    Args:
        in_channels: channels of the inputs, shallow to deep (four ViT layers).
        channels: width of the laterals and the outputs (256).
        norm_eps: eps of the input LayerNorms.
    """

    def __init__(self, in_channels: tuple[int, ...] | list[int], channels: int = 256, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(c, eps=norm_eps) for c in in_channels)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1) for c in in_channels)
        self.out_convs = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in in_channels)
        self.out_channels = [channels] * len(in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Shallow-to-deep maps -> as many `channels`-wide maps, shallow to deep (output i sums laterals i..last)."""
        if len(features) != len(self.norms):
            raise ValueError(f"MLANeck expects {len(self.norms)} feature maps, got {len(features)}")
        laterals = [conv(_channel_layer_norm(norm, x))
                    for norm, conv, x in zip(self.norms, self.lateral_convs, features, strict=True)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down: each level adds the running sum of the deeper ones
            laterals[i] = laterals[i] + laterals[i + 1]
        return [conv(x) for conv, x in zip(self.out_convs, laterals, strict=True)]


class SETRMLAHead(nn.Module):
    """SETR's MLA head: per level two 3x3 convs (BN, ReLU) and bilinear upsampling, concatenation, classifier.

    Args:
        in_channels: channels of the neck outputs, shallow to deep.
        channels: width of each level's convs (`mla_channels`, 128); the classifier sees `len(in_channels)` times it.
        num_classes: output classes.
        up_scale: upsampling factor of each level (4).
        classifier_kernel: kernel of the classifier: 1 (mmseg) or 3 (the original `cls`).
        align_corners: `align_corners` of the final resize done outside the model, and of the level upsampling
            unless `up_align_corners` is given.
        up_align_corners: `align_corners` of the level upsampling when it differs (True in the original code).
        dropout: Dropout2d rate before the classifier (0 in every SETR config).
    """

    def __init__(
        self,
        in_channels: tuple[int, ...] | list[int],
        channels: int,
        num_classes: int,
        up_scale: int = 4,
        classifier_kernel: int = 1,
        align_corners: bool = False,
        up_align_corners: bool | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if classifier_kernel not in (1, 3):
            raise ValueError(f"SETRMLAHead classifier_kernel must be 1 or 3, got {classifier_kernel}")
        self.up_scale = up_scale
        self.align_corners = align_corners
        self.up_align_corners = align_corners if up_align_corners is None else up_align_corners
        self.convs = nn.ModuleList(
            nn.Sequential(ConvNormAct(c, channels, 3), ConvNormAct(channels, channels, 3)) for c in in_channels
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(len(in_channels) * channels, num_classes, classifier_kernel,
                                    padding=classifier_kernel // 2)

    @property
    def upsampling(self) -> int:
        """Total upsampling factor of the head (logits stride = backbone stride / this)."""
        return self.up_scale

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.convs):
            raise ValueError(f"SETRMLAHead expects {len(self.convs)} feature maps, got {len(features)}")
        levels = [_upsample(conv(x), self.up_scale, self.up_align_corners)
                  for conv, x in zip(self.convs, features, strict=True)]
        return self.classifier(self.dropout(torch.cat(levels, dim=1)))
