"""The HRNetV2 segmentation head ("FCN resize-concat"): all branches resized to the first's size and concatenated,
then a 1x1 conv + BN + ReLU at the same width and a 1x1 classifier.

Paper: "High-Resolution Representations for Labeling Pixels and Regions", Sun et al., arXiv:1904.04514. Facts from
the official HRNet/HRNet-Semantic-Segmentation `last_layer` (1x1 conv with bias, BN, ReLU, 1x1 classifier; bilinear
resize with `align_corners=True` in the HRNet-OCR branch, False in older versions) and mmsegmentation's `FCNHead` with
`input_transform='resize_concat'`, `kernel_size=1`, `dropout_ratio=-1` (conv without bias, `align_corners=False`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FuseConv(nn.Sequential):
    """1x1 conv -> BN -> ReLU whose conv may keep its bias although a BN follows (the official `last_layer.0`).

    Children `conv`, `norm`, `act` as in `seglab.layers.ConvNormAct`.

    Args:
        channels: input and output channels.
        bias: whether the conv has a bias.
        norm_layer: BatchNorm constructor.
    """

    def __init__(self, channels: int, bias: bool, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=bias)
        self.norm = norm_layer(channels)
        self.act = nn.ReLU()


class HRNetV2Head(nn.Module):
    """Resize-concat head on the selected backbone outputs.

    Args:
        in_channels: channels of every backbone output.
        num_classes: output classes.
        in_index: which backbone outputs to concatenate (default all), in this order.
        align_corners: `align_corners` of the bilinear resize to the first selected output's size.
        dropout: Dropout2d rate before the classifier (none in the official and mmseg configs).
        conv_bias: bias on the fuse conv (True in the official code, False in mmseg).
        bn_momentum: momentum of the fuse BatchNorm.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        in_index: Sequence[int] | None = None,
        align_corners: bool = True,
        dropout: float = 0.0,
        conv_bias: bool = True,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_index = tuple(range(len(in_channels)) if in_index is None else in_index)
        self.align_corners = align_corners
        channels = sum(in_channels[i] for i in self.in_index)
        self.fuse = FuseConv(channels, conv_bias, lambda c: nn.BatchNorm2d(c, momentum=bn_momentum))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        selected = [features[i] for i in self.in_index]
        size = selected[0].shape[-2:]
        x = torch.cat([selected[0]] + [
            F.interpolate(t, size=size, mode="bilinear", align_corners=self.align_corners) for t in selected[1:]
        ], dim=1)
        return self.classifier(self.dropout(self.fuse(x)))
