"""The MLA decode head of the original SETR code, written from the official file.

Follows fudan-zvg/SETR @ 1361561ffde90e07ed1b4f9cdbc10b88ce27e2f3 : `mmseg/models/decode_heads/vit_mla_head.py`
(`MLAHead`, `VIT_MLAHead`), with `BaseDecodeHead` of that repository's mmseg (`official.mmcv_lite`). Same module names
(`mlahead.head{2..5}` = `Sequential(conv 3x3, BN, ReLU, conv 3x3, BN, ReLU)` without conv biases, `cls` a 3x3 conv with
bias, plus the unused `conv_seg`) and forward. Quirks kept: the forward takes the backbone's four MLA maps directly
(no `_transform_inputs`); each level is upsampled x4 to `4 * width` (square) with `align_corners=True` hard-coded;
the levels are concatenated shallow to deep (head2 .. head5); the classifier is 3x3; the logits are resized to
`img_size` (square) with the head's `align_corners`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from official.mmcv_lite import BaseDecodeHead, build_norm_layer


class MLAHead(nn.Module):
    def __init__(self, mla_channels=256, mlahead_channels=128, norm_cfg=None):
        super().__init__()
        for level in (2, 3, 4, 5):
            setattr(self, f"head{level}", nn.Sequential(
                nn.Conv2d(mla_channels, mlahead_channels, 3, padding=1, bias=False),
                build_norm_layer(norm_cfg, mlahead_channels)[1], nn.ReLU(),
                nn.Conv2d(mlahead_channels, mlahead_channels, 3, padding=1, bias=False),
                build_norm_layer(norm_cfg, mlahead_channels)[1], nn.ReLU()))

    def forward(self, mla_p2, mla_p3, mla_p4, mla_p5):
        outs = []
        for level, x in zip((2, 3, 4, 5), (mla_p2, mla_p3, mla_p4, mla_p5), strict=True):
            y = getattr(self, f"head{level}")(x)
            outs.append(F.interpolate(y, 4 * x.shape[-1], mode="bilinear", align_corners=True))
        return torch.cat(outs, dim=1)


class VIT_MLAHead(BaseDecodeHead):
    def __init__(self, img_size=768, mla_channels=256, mlahead_channels=128, norm_layer=nn.BatchNorm2d,
                 norm_cfg=None, **kwargs):
        super().__init__(norm_cfg=norm_cfg, **kwargs)
        self.img_size = img_size
        self.mlahead = MLAHead(mla_channels=mla_channels, mlahead_channels=mlahead_channels, norm_cfg=norm_cfg)
        self.cls = nn.Conv2d(4 * mlahead_channels, self.num_classes, 3, padding=1)

    def forward(self, inputs):
        x = self.cls(self.mlahead(inputs[0], inputs[1], inputs[2], inputs[3]))
        return F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=self.align_corners)
