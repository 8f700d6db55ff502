"""BPR's refinement backbone: HRNet with a coarse-mask input conv, written from the repository's file.

Follows chenhang98/BPR @ 9eafc3f1f6f6c4cfcdd0ceaf9f42bb2d07f90f4f : `mmseg/models/backbones/hrnet_refine.py`
(`HRNetRefine`), on its mmseg 0.7 HRNet (`official.bpr.hrnet`). Same module names (`conv_mask`: Conv2d 1 -> 64, 3x3,
stride 2, padding 1, no bias) and forward. Quirk kept: the input is the image with the mask as a 4th channel; the mask
conv's output is *added* to the image conv's output before the stem's first BN.
"""

from __future__ import annotations

from torch import nn

from official.bpr.hrnet import HRNet


class HRNetRefine(HRNet):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conv_mask = nn.Conv2d(1, 64, kernel_size=3, stride=2, padding=1, bias=False)

    def forward(self, x):
        img, mask = x[:, :3, ...], x[:, 3:, ...]
        x = self.relu(self.norm1(self.conv1(img) + self.conv_mask(mask)))
        x = self.relu(self.norm2(self.conv2(x)))
        return self.stages_forward(self.layer1(x))
