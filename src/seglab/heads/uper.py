"""UperNet's decode head (UPerHead): a pyramid pooling module on the deepest map and a feature pyramid.

Paper: "Unified Perceptual Parsing for Scene Understanding", Xiao et al., ECCV 2018, arXiv:1807.10221; the head as
used by the Swin Transformer segmentation results (mmsegmentation `UPerHead`, transformers `UperNetHead`):

- PPM: for each pool scale (1, 2, 3, 6), adaptive average pooling of the deepest map, 1x1 conv + BN + ReLU, bilinear
  upsampling back; the map and the pooled branches are concatenated and fused by a 3x3 conv + BN + ReLU.
- FPN: 1x1 lateral convs (BN + ReLU) on the other maps, top-down addition of the upsampled deeper level, a 3x3 conv
  (BN + ReLU) on each level but the deepest, all levels upsampled to the finest and concatenated, a 3x3 fusion conv
  (BN + ReLU), dropout, 1x1 classifier. Logits at the finest input's stride.

Speed: the fusion conv is the head's largest layer (for Swin-T at 512x512, 155 of the model's ~235 G multiply-adds):
a 3x3 conv over `levels x channels` maps at 1/4 resolution, three of them bilinear upsamplings of coarser maps. A conv
acts on channels per kernel tap and bilinear resizing acts on space, so for a coarse level the tap's channel mixing is
applied at the level's own resolution and only its `channels`-wide result is upsampled, then shifted into place:
`conv3x3(up(x)) = sum over taps t of shift_t(up(W_t x))`, exactly (zero padding included, since the shift fills with
zeros like the conv's padding). The coarse levels then cost 9 small 1x1 convs instead of a conv at 1/4 resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import ConvNormAct, adaptive_avg_pool, resize


class PyramidPooling(nn.Module):
    """Adaptive-average-pooled branches of one map, each 1x1 conv + BN + ReLU and upsampled back.

    Args:
        in_channels: channels of the pooled map.
        channels: channels of every branch.
        pool_scales: output sizes of the adaptive pooling.
        align_corners: `align_corners` of the upsampling.
    """

    def __init__(
        self, in_channels: int, channels: int, pool_scales: tuple[int, ...], align_corners: bool = False
    ) -> None:
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.align_corners = align_corners
        self.convs = nn.ModuleList(ConvNormAct(in_channels, channels, 1) for _ in self.pool_scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = x.shape[-2:]
        return [resize(conv(adaptive_avg_pool(x, scale)), size, self.align_corners)
                for scale, conv in zip(self.pool_scales, self.convs, strict=True)]


class UPerHead(nn.Module):
    """PPM + FPN decode head.

    Args:
        in_channels: channels of the backbone outputs, shallow to deep.
        channels: width of every conv of the head (512 in the Swin recipes).
        num_classes: output classes.
        pool_scales: PPM pool sizes.
        dropout: Dropout2d rate before the classifier.
        align_corners: `align_corners` of every bilinear resize.
    """

    def __init__(
        self,
        in_channels: tuple[int, ...] | list[int],
        channels: int,
        num_classes: int,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        self.align_corners = align_corners
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales, align_corners)
        self.bottleneck = ConvNormAct(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deepest = features[-1]
        levels = [conv(x) for conv, x in zip(self.lateral_convs, features[:-1], strict=True)]
        levels.append(self.bottleneck(torch.cat([deepest, *self.ppm(deepest)], dim=1)))
        for i in range(len(levels) - 1, 0, -1):  # top-down: add each level, upsampled, to the next finer one
            levels[i - 1] = levels[i - 1] + resize(levels[i], levels[i - 1].shape[-2:], self.align_corners)
        outs = [conv(x) for conv, x in zip(self.fpn_convs, levels[:-1], strict=True)] + [levels[-1]]
        fused = self.fpn_bottleneck.act(self.fpn_bottleneck.norm(self.fuse_conv(outs)))
        return self.classifier(self.dropout(fused))

    def fuse_conv(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """The fusion conv over `cat([outs[0], up(outs[1]), ...])`, without building the upsampled maps at full width.

        Equal to `conv(cat([outs[0]] + [resize(x, size) for x in outs[1:]]))` (see the module docstring). Bilinear
        resizing is separable, `up(y) = U_h y U_w^T`, and a tap's shift only moves rows of `U_h` and `U_w`, so the
        shifted upsamplings of all nine taps are two small matrix products per coarse level.
        """
        conv = self.fpn_bottleneck.conv
        finest = outs[0]
        if torch.compiler.is_exporting():  # the plain form: exporters handle it directly and graph runtimes fuse it
            return conv(torch.cat([finest] + [resize(x, finest.shape[-2:], self.align_corners) for x in outs[1:]], 1))
        channels, out_channels = finest.shape[1], conv.weight.shape[0]
        height, width = finest.shape[-2:]
        blocks = conv.weight.split(channels, dim=1)  # one (out, channels, 3, 3) block per level
        fused = F.conv2d(finest, blocks[0], padding=1)
        for block, x in zip(blocks[1:], outs[1:], strict=True):
            batch, _, h, w = x.shape
            taps = block.permute(2, 3, 0, 1).reshape(9 * out_channels, channels, 1, 1)  # rows ordered (ky, kx, out)
            y = F.conv2d(x, taps).view(batch, 3, 3, out_channels, h, w)  # every tap's channel mixing, at (h, w)
            rows = _shifted_interpolation(h, height, self.align_corners, x)  # (3, height, h): U_h shifted by ky - 1
            cols = _shifted_interpolation(w, width, self.align_corners, x)  # (3, width, w)
            # out[b, o, p, q] += sum_{ky, kx, i, j} rows[ky, p, i] * y[b, ky, kx, o, i, j] * cols[kx, q, j]
            half = torch.einsum("byxoij,xqj->byoiq", y, cols)  # (B, 3, out, h, width)
            fused = fused + torch.einsum("byoiq,ypi->bopq", half, rows)
        return fused


def _shifted_interpolation(size_in: int, size_out: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """(3, size_out, size_in): row `p` of slice `k` holds the bilinear weights of output position `p + k - 1`
    (zeros past the border), i.e. PyTorch's 1-D bilinear resize matrix shifted by one 3x3 conv tap."""
    basis = torch.eye(size_in, dtype=like.dtype, device=like.device).view(size_in, 1, size_in, 1)
    # resizing each basis vector gives the resize matrix with PyTorch's own weights; (in, 1, out, 1) -> (out, in)
    matrix = F.interpolate(basis, size=(size_out, 1), mode="bilinear", align_corners=align_corners)[:, 0, :, 0].T
    padded = F.pad(matrix, (0, 0, 1, 1))  # a zero row before and after: taps reaching past the border add nothing
    return torch.stack([padded[k : k + size_out] for k in range(3)])
