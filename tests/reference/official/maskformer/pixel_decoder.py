"""MaskFormer's FPN pixel decoder, written from the official file.

Follows facebookresearch/MaskFormer @ da3e60d85fdeedcb31476b5edd7d328826ce56cc :
`mask_former/modeling/heads/pixel_decoder.py` (`BasePixelDecoder`), with detectron2's `Conv2d` / `get_norm`. Same
module names (`adapter_{k}` (1x1 lateral, GN, no bias) and `layer_{k}` (3x3, GN, ReLU, no bias) for k = 1..n, the
deepest map having `layer_n` only; `mask_features`, a 3x3 conv with bias) and forward: top-down from the deepest map,
`y = layer(adapter(x) + nearest_upsample(y))`, then `mask_features(y)` at stride 4.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from official.maskformer.detectron2_layers import Conv2d, get_norm


class BasePixelDecoder(nn.Module):
    def __init__(self, input_shape, *, conv_dim, mask_dim, norm=None):
        """`input_shape`: {name: (channels, stride)} of the backbone outputs."""
        super().__init__()
        input_shape = sorted(input_shape.items(), key=lambda x: x[1][1])
        self.in_features = [k for k, _ in input_shape]
        feature_channels = [v[0] for _, v in input_shape]
        lateral_convs, output_convs = [], []
        use_bias = norm == ""
        for idx, in_channels in enumerate(feature_channels):
            if idx == len(self.in_features) - 1:
                output_conv = Conv2d(in_channels, conv_dim, kernel_size=3, stride=1, padding=1, bias=use_bias,
                                     norm=get_norm(norm, conv_dim), activation=F.relu)
                self.add_module(f"layer_{idx + 1}", output_conv)
                lateral_convs.append(None)
                output_convs.append(output_conv)
            else:
                lateral_conv = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias,
                                      norm=get_norm(norm, conv_dim))
                output_conv = Conv2d(conv_dim, conv_dim, kernel_size=3, stride=1, padding=1, bias=use_bias,
                                     norm=get_norm(norm, conv_dim), activation=F.relu)
                self.add_module(f"adapter_{idx + 1}", lateral_conv)
                self.add_module(f"layer_{idx + 1}", output_conv)
                lateral_convs.append(lateral_conv)
                output_convs.append(output_conv)
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, stride=1, padding=1)

    def forward_features(self, features):
        for idx, f in enumerate(self.in_features[::-1]):
            x = features[f]
            lateral_conv, output_conv = self.lateral_convs[idx], self.output_convs[idx]
            if lateral_conv is None:
                y = output_conv(x)
            else:
                cur_fpn = lateral_conv(x)
                y = output_conv(cur_fpn + F.interpolate(y, size=cur_fpn.shape[-2:], mode="nearest"))
        return self.mask_features(y), None
