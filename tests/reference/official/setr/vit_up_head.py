"""The Naive / PUP decode head of the original SETR code, written from the official file.

Follows fudan-zvg/SETR @ 1361561ffde90e07ed1b4f9cdbc10b88ce27e2f3 : `mmseg/models/decode_heads/vit_up_head.py`
(`VisionTransformerUpHead`), with `BaseDecodeHead` of that repository's mmseg (`official.mmcv_lite`). Same module names
(`norm`, `conv_{k}`, `syncbn_fc_{k}`, and the `conv_seg` that `BaseDecodeHead` builds from `channels` and the forward
never calls) and forward for `upsampling_method='bilinear'`. Quirks kept: a token sequence whose length is not a
multiple of 48 loses its first token (the class-token hack), then the head's own LayerNorm (eps 1e-6) and a square
reshape; every conv has a bias, BN follows; `num_conv=2` with `num_upsampe_layer=1` (Naive) classifies at stride 16
and resizes to `img_size` once, with `num_upsampe_layer=2` (PUP auxiliary) it upsamples x4 (`size=4 * width`, a
square target) before the classifier; `num_conv=4` (PUP) runs four conv-BN-ReLU steps, x2 after each of the first
three, the 1x1 classifier, then a last x2, each to `2 * width` (square). `img_size` is an int: the final size is
square.
"""

from __future__ import annotations

import math
from functools import partial

import torch.nn.functional as F
from torch import nn

from official.mmcv_lite import BaseDecodeHead, build_norm_layer


class VisionTransformerUpHead(BaseDecodeHead):
    def __init__(self, img_size=768, embed_dim=1024, norm_layer=partial(nn.LayerNorm, eps=1e-6),  # noqa: B008
                 norm_cfg=None, num_conv=1, upsampling_method="bilinear", num_upsampe_layer=1, conv3x3_conv1x1=True,
                 **kwargs):
        super().__init__(norm_cfg=norm_cfg, **kwargs)
        self.img_size = img_size
        self.num_conv = num_conv
        self.norm = norm_layer(embed_dim)
        self.upsampling_method = upsampling_method
        self.num_upsampe_layer = num_upsampe_layer
        out_channel = self.num_classes
        if num_conv == 2:
            if conv3x3_conv1x1:
                self.conv_0 = nn.Conv2d(embed_dim, 256, kernel_size=3, stride=1, padding=1)
            else:
                self.conv_0 = nn.Conv2d(embed_dim, 256, 1, 1)
            self.conv_1 = nn.Conv2d(256, out_channel, 1, 1)
            self.syncbn_fc_0 = build_norm_layer(norm_cfg, 256)[1]
        elif num_conv == 4:
            self.conv_0 = nn.Conv2d(embed_dim, 256, kernel_size=3, stride=1, padding=1)
            self.conv_1 = nn.Conv2d(256, 256, kernel_size=3, stride=1, padding=1)
            self.conv_2 = nn.Conv2d(256, 256, kernel_size=3, stride=1, padding=1)
            self.conv_3 = nn.Conv2d(256, 256, kernel_size=3, stride=1, padding=1)
            self.conv_4 = nn.Conv2d(256, out_channel, kernel_size=1, stride=1)
            for k in range(4):
                setattr(self, f"syncbn_fc_{k}", build_norm_layer(norm_cfg, 256)[1])

    def _up(self, x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def _conv_bn_relu(self, x, k):
        return F.relu(getattr(self, f"syncbn_fc_{k}")(getattr(self, f"conv_{k}")(x)), inplace=True)

    def forward(self, x):
        x = self._transform_inputs(x)
        if x.dim() == 3:
            if x.shape[1] % 48 != 0:
                x = x[:, 1:]  # NOTE: the original's way of dropping the class token
            x = self.norm(x)
        assert self.upsampling_method == "bilinear"
        if x.dim() == 3:
            n, hw, c = x.shape
            h = w = int(math.sqrt(hw))
            x = x.transpose(1, 2).reshape(n, c, h, w)  # (B, N, C) -> (B, C, h, w), square
        if self.num_conv == 2:
            x = self._conv_bn_relu(x, 0)
            if self.num_upsampe_layer == 2:
                x = self._up(x, x.shape[-1] * 4)
            x = self.conv_1(x)
            x = self._up(x, self.img_size)
        elif self.num_conv == 4 and self.num_upsampe_layer == 4:
            for k in range(3):
                x = self._up(self._conv_bn_relu(x, k), x.shape[-1] * 2)
            x = self.conv_4(self._conv_bn_relu(x, 3))
            x = self._up(x, x.shape[-1] * 2)
        return x
