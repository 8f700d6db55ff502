"""Semantic FPN: an FPN neck and the panoptic-FPN semantic branch, as one decode head.

Papers: "Feature Pyramid Networks for Object Detection", Lin et al., CVPR 2017, arXiv:1612.03144 (the neck);
"Panoptic Feature Pyramid Networks", Kirillov et al., CVPR 2019, arXiv:1901.02446 (the head). The decoder of the
PVT (arXiv:2102.12122) and CycleMLP (arXiv:2107.10224) ADE20K results, i.e. mmsegmentation's `FPN` neck + `FPNHead`
with the `sem_fpn` recipe (neck width 256, 4 outputs, no extra convs, no norm; head width 128, BN + ReLU, dropout 0.1,
`align_corners=False`):

- Neck: a 1x1 lateral conv (with bias) per backbone map; top-down, from the deepest level, each lateral gets the
  nearest-neighbour upsampling of the next deeper lateral (to its exact size) added; a 3x3 conv (with bias) on every
  level. Four outputs of `neck_channels`, at the backbone's strides.
- Head: per level, `max(1, log2(stride) - log2(stride_0))` blocks of 3x3 conv (no bias) + BN + ReLU, each followed by
  a bilinear x2 upsampling when the level is coarser than the first; the level outputs are bilinearly resized to the
  first level's size and summed, then dropout and a 1x1 classifier. Logits at the first map's stride (4).

NOTE: on odd map sizes the x2 upsamplings overshoot the finest map (a 3x2 map at stride 32 becomes 24x16 next to a
20x13 map at stride 4); as in mmseg, the final bilinear resize of each level to the finest map's size absorbs it.

Checkpoint keys (mmseg `EncoderDecoder` with neck -> seglab `EncoderDecoder` with this head as `decode_head`):

| mmseg                                         | seglab                                                  |
|-----------------------------------------------|---------------------------------------------------------|
| `neck.lateral_convs.{i}.conv.{weight,bias}`   | `decode_head.neck.lateral_convs.{i}.conv.{weight,bias}` |
| `neck.fpn_convs.{i}.conv.{weight,bias}`       | `decode_head.neck.fpn_convs.{i}.conv.{weight,bias}`     |
| `decode_head.scale_heads.{i}.{k}.conv.weight` | `decode_head.scale_heads.{i}.{k}.conv.weight`           |
| `decode_head.scale_heads.{i}.{k}.bn.*`        | `decode_head.scale_heads.{i}.{k}.norm.*`                |
| `decode_head.conv_seg.{weight,bias}`          | `decode_head.classifier.{weight,bias}`                  |

`k` is the index in the level's `nn.Sequential`, where the (parameter-free) x2 upsamplings sit between the convs
exactly as in mmseg, so it maps unchanged: 0 for levels 0 and 1, {0, 2} for level 2, {0, 2, 4} for level 3.

Initialisation follows mmseg: Xavier-uniform neck convs with zero bias, Kaiming-normal (fan-out, ReLU) head convs,
unit BN, and a N(0, 0.01) classifier with zero bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import ConvNormAct, resize


class FPNNeck(nn.Module):
    """Feature pyramid network without norm, activation or extra levels (mmseg `FPN`, `num_outs == len(in_channels)`).

    Args:
        in_channels: channels of the backbone outputs, shallow to deep.
        out_channels: channels of every output level.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm_layer=None, act_layer=None) for c in self.in_channels
        )
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm_layer=None, act_layer=None) for _ in self.in_channels
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.lateral_convs):
            raise ValueError(
                f"FPNNeck: got {len(features)} feature maps, expected {len(self.lateral_convs)} "
                f"(one per entry of in_channels={self.in_channels}, shallow to deep)"
            )
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down, deepest first: each level feeds the next finer one
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]


class SemanticFPNHead(nn.Module):
    """FPN neck + Semantic FPN head (mmseg `FPN` + `FPNHead`) as one decode head.

    Args:
        in_channels: channels of the backbone outputs, shallow to deep.
        num_classes: output classes.
        neck_channels: width of the FPN neck's outputs.
        channels: width of the scale heads' convs.
        feature_strides: stride of each backbone output; the first must be the smallest and every other one a
            power-of-two multiple of it.
        dropout: Dropout2d rate before the classifier.
        align_corners: `align_corners` of every bilinear upsampling and resize.
    """

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        neck_channels: int = 256,
        channels: int = 128,
        feature_strides: tuple[int, ...] | list[int] = (4, 8, 16, 32),
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        feature_strides = tuple(feature_strides)
        if len(feature_strides) != len(in_channels):
            raise ValueError(
                f"SemanticFPNHead: feature_strides={feature_strides} has {len(feature_strides)} entries, expected one "
                f"per entry of in_channels={in_channels}"
            )
        base = feature_strides[0]
        for stride in feature_strides:
            ratio = stride // base
            if stride < base or stride % base or ratio & (ratio - 1):
                raise ValueError(
                    f"SemanticFPNHead: feature_strides={feature_strides}: every stride must be the first one ({base}) "
                    f"times a power of two, got {stride}"
                )
        self.feature_strides = feature_strides
        self.align_corners = align_corners
        self.neck = FPNNeck(in_channels, neck_channels)
        self.scale_heads = nn.ModuleList()
        for stride in feature_strides:
            num_convs = max(1, int(math.log2(stride // base)))
            layers: list[nn.Module] = []
            for k in range(num_convs):
                layers.append(ConvNormAct(neck_channels if k == 0 else channels, channels, 3))
                if stride != base:
                    # NOTE: mmseg's Upsample resizes to `int(2 * size)`; with a scale factor of 2 PyTorch produces the
                    # same size and the same sampling grid.
                    layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=align_corners))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for conv in self.neck.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)
        for module in self.scale_heads.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = self.neck(features)
        out = self.scale_heads[0](levels[0])
        for head, x in zip(self.scale_heads[1:], levels[1:], strict=True):
            out = out + resize(head(x), out.shape[-2:], self.align_corners)
        return self.classifier(self.dropout(out))
