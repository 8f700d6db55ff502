"""SegFormer's All-MLP decoder (arXiv:2105.15203, NVlabs/SegFormer `SegFormerHead`).

Per stage a linear layer to `channels`, upsampling to 1/4, concatenation (deepest stage first, as in the
original and Hugging Face), a 1x1 fuse conv with BN + ReLU, dropout, and a 1x1 classifier.

Speed: the per-stage linear and the fuse conv are linear maps and bilinear upsampling commutes with them
(its weights sum to 1), so each stage is projected straight to the fused space at its own resolution and
only the `channels`-wide result is upsampled and summed. Same function as concat-then-fuse, without the
4*channels-wide tensor at 1/4 resolution and its 1x1 conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import ConvNormAct


class SegFormerHead(nn.Module):
    """All-MLP decode head.

    Args:
        in_channels: channels of the backbone outputs, shallow to deep.
        channels: the embedding width (`decoder_params.embed_dim`: 256 for B0/B1, 768 for B2-B5).
        num_classes: output classes.
        dropout: Dropout2d rate before the classifier.
        align_corners: `align_corners` of the bilinear upsampling.
        stage_norm_act: mmsegmentation's variant, where each stage's projection is a bias-free 1x1 conv with
            BN + ReLU; the paper and the official code use a plain linear layer (False).
    """

    def __init__(
        self,
        in_channels: tuple[int, ...] | list[int],
        channels: int,
        num_classes: int,
        dropout: float = 0.1,
        align_corners: bool = False,
        stage_norm_act: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.align_corners = align_corners
        self.stage_norm_act = stage_norm_act
        norm, act = (nn.BatchNorm2d, nn.ReLU) if stage_norm_act else (None, None)
        self.linear_c = nn.ModuleList(ConvNormAct(c, channels, 1, norm_layer=norm, act_layer=act) for c in in_channels)
        # NOTE: input-channel blocks of the fuse conv are ordered deepest stage first, as in the original.
        self.linear_fuse = ConvNormAct(channels * len(in_channels), channels, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def fuse_block(self, stage: int) -> torch.Tensor:
        """The (channels, channels) slice of the fuse conv that acts on `stage`'s projection."""
        n = len(self.linear_c)
        start = (n - 1 - stage) * self.channels
        return self.linear_fuse.conv.weight[:, start : start + self.channels, 0, 0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        norm = self.linear_fuse.norm
        scale = shift = None
        if not self.training:  # fold the eval-mode BN of the fuse conv into the per-stage weights
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            shift = norm.bias - norm.running_mean * scale
        fused = None
        for i, x in enumerate(features):
            block = self.fuse_block(i)
            if scale is not None:
                block = block * scale[:, None]
            if self.stage_norm_act:  # non-linear projection: apply it, then the fuse block
                y = F.conv2d(self.linear_c[i](x), block[:, :, None, None])
            else:  # fold fuse block and projection into one 1x1 conv
                proj = self.linear_c[i].conv
                y = F.conv2d(x, (block @ proj.weight[:, :, 0, 0])[:, :, None, None], block @ proj.bias)
            if i > 0:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)
            # in place is safe: neither the conv nor the interpolation keeps its output for backward
            fused = y if fused is None else fused.add_(y)
        if scale is None:
            x = self.linear_fuse.act(norm(fused))
        else:
            x = self.linear_fuse.act(fused.add_(shift[:, None, None]))
        return self.classifier(self.dropout(x))
