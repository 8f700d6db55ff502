"""The MLA auxiliary head of the original SETR code, written from the official file.

Follows fudan-zvg/SETR @ 1361561ffde90e07ed1b4f9cdbc10b88ce27e2f3 : `mmseg/models/decode_heads/vit_mla_auxi_head.py`
(`VIT_MLA_AUXIHead`), with `BaseDecodeHead` of that repository's mmseg (`official.mmcv_lite`). Same module names and
forward: with `in_channels=256` (the MLA configs) a single 1x1 conv `aux` without bias on the selected MLA map, then a
resize to `img_size` (square); with `in_channels=1024` two 1x1 convs `aux_0`, `aux_1`. The unused `conv_seg` is built.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from official.mmcv_lite import BaseDecodeHead


class VIT_MLA_AUXIHead(BaseDecodeHead):
    def __init__(self, img_size=768, **kwargs):
        super().__init__(**kwargs)
        self.img_size = img_size
        if self.in_channels == 1024:
            self.aux_0 = nn.Conv2d(self.in_channels, 256, kernel_size=1, bias=False)
            self.aux_1 = nn.Conv2d(256, self.num_classes, kernel_size=1, bias=False)
        elif self.in_channels == 256:
            self.aux = nn.Conv2d(self.in_channels, self.num_classes, kernel_size=1, bias=False)

    def forward(self, x):
        x = self._transform_inputs(x)
        if x.dim() == 3:
            x = x[:, 1:]
            n, hw, c = x.shape
            h = w = int(math.sqrt(hw))
            x = x.transpose(1, 2).reshape(n, c, h, w)
        if self.in_channels == 1024:
            x = self.aux_1(self.aux_0(x))
        elif self.in_channels == 256:
            x = self.aux(x)
        return F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=self.align_corners)
