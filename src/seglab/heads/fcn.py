"""The FCN head (mmsegmentation `FCNHead`), used as the auxiliary head of UperNet and other recipes.

`num_convs` 3x3 convs (BN + ReLU) on one backbone output, optionally concatenated with the input and fused by one
more 3x3 conv (`concat_input`), dropout, 1x1 classifier. Paper: "Fully Convolutional Networks for Semantic
Segmentation", Long et al., CVPR 2015.
"""

from __future__ import annotations

import torch
from torch import nn

from seglab.layers import ConvNormAct


class FCNHead(nn.Module):
    """Conv stack + classifier on the backbone output `in_index`.

    Args:
        in_channels: channels of the selected backbone output.
        channels: width of the convs.
        num_classes: output classes.
        in_index: which backbone output to read.
        num_convs: number of 3x3 conv + BN + ReLU layers.
        concat_input: concatenate the input with the conv stack's output and fuse with one more 3x3 conv.
        dropout: Dropout2d rate before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        in_index: int = 2,
        num_convs: int = 1,
        concat_input: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_index = in_index
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.ModuleList(ConvNormAct(widths[i], channels, 3) for i in range(num_convs))
        self.conv_cat = ConvNormAct(in_channels + channels, channels, 3) if concat_input else None
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels if num_convs else in_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[self.in_index]
        out = x
        for conv in self.convs:
            out = conv(out)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.classifier(self.dropout(out))
