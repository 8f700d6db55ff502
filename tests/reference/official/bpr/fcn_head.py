"""mmseg 0.7's FCN head, as BPR's configs use it, written from the repository's file.

Follows chenhang98/BPR @ 9eafc3f1f6f6c4cfcdd0ceaf9f42bb2d07f90f4f : `mmseg/models/decode_heads/fcn_head.py`
(`FCNHead`), with `BaseDecodeHead` and `ConvModule` (`official.mmcv_lite`, the same as this repository's
`decode_head.py` and mmcv's). Same module names (`convs.{i}.conv`, `convs.{i}.bn`, `conv_cat` when `concat_input`,
`conv_seg`) and forward. BPR's configs: `input_transform='resize_concat'` over the four HRNet branches (bilinear to
the first branch, `align_corners=False`), one 1x1 ConvModule (no conv bias, BN, ReLU), no concat, no dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from official.mmcv_lite import BaseDecodeHead, ConvModule


class FCNHead(BaseDecodeHead):
    def __init__(self, num_convs=2, kernel_size=3, concat_input=True, **kwargs):
        assert num_convs > 0
        self.num_convs = num_convs
        self.concat_input = concat_input
        self.kernel_size = kernel_size
        super().__init__(**kwargs)
        convs = [ConvModule(self.in_channels, self.channels, kernel_size=kernel_size, padding=kernel_size // 2,
                            conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)]
        convs += [ConvModule(self.channels, self.channels, kernel_size=kernel_size, padding=kernel_size // 2,
                             conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
                  for _ in range(num_convs - 1)]
        self.convs = nn.Sequential(*convs)
        if concat_input:
            self.conv_cat = ConvModule(self.in_channels + self.channels, self.channels, kernel_size=kernel_size,
                                       padding=kernel_size // 2, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                       act_cfg=self.act_cfg)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        output = self.convs(x)
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        return self.cls_seg(output)
