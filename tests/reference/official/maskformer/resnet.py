"""detectron2's ResNet as MaskFormer's R50 / R101 configs build it, written from the detectron2 file.

Follows facebookresearch/detectron2 @ 02b5c4e295e990042a714712c21dc79b731e8833 : `detectron2/modeling/backbone/
resnet.py` (`BasicStem`, `BottleneckBlock`, `ResNet`, `ResNet.make_stage`, `build_resnet_backbone`), with the
MaskFormer settings (`configs/ade20k-150/Base-ADE20K-150.yaml` @ da3e60d: `STRIDE_IN_1X1: False`, stem "basic",
`RESNETS.NORM` left at detectron2's default "FrozenBN", out features res2..res5). Same module names (`stem.conv1`,
`stem.conv1.norm`, `res{2..5}.{i}.conv{1,2,3}` with `.norm`, `.shortcut` with `.norm`) and forward. Quirks kept: the
stem is a 7x7 stride-2 conv + norm + ReLU + 3x3 stride-2 max pool with padding 1; the stride of a stage's first block
sits on the 3x3 conv; a block has a projection shortcut only where its width changes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from official.maskformer.detectron2_layers import Conv2d, get_norm


class BasicStem(nn.Module):
    def __init__(self, in_channels=3, out_channels=64, norm="BN"):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
                            norm=get_norm(norm, out_channels))

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    def __init__(self, in_channels, out_channels, *, bottleneck_channels, stride=1, num_groups=1, norm="BN",
                 stride_in_1x1=False, dilation=1):
        super().__init__()
        self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                               norm=get_norm(norm, out_channels)) if in_channels != out_channels else None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride_3x3,
                            padding=dilation, bias=False, groups=num_groups, dilation=dilation,
                            norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class ResNet(nn.Module):
    def __init__(self, stem, stages, out_features):
        super().__init__()
        self.stem = stem
        self.stage_names, self.stages = [], []
        for i, blocks in enumerate(stages):
            name = f"res{i + 2}"
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
        self._out_features = out_features

    def forward(self, x):
        outputs = {}
        x = self.stem(x)
        for name, stage in zip(self.stage_names, self.stages, strict=True):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    @property
    def size_divisibility(self):
        return 0


def build_resnet_backbone(depth=50, norm="FrozenBN", stride_in_1x1=False, out_features=("res2", "res3", "res4", "res5"),
                          stem_out_channels=64, res2_out_channels=256, num_groups=1, width_per_group=64):
    """`build_resnet_backbone(cfg, input_shape)` for the config values named here (no deformable convs, dilation 1)."""
    stem = BasicStem(3, stem_out_channels, norm)
    blocks_per_stage = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    in_channels, out_channels = stem_out_channels, res2_out_channels
    bottleneck_channels = num_groups * width_per_group
    stages = []
    for idx in range(4):
        first_stride = 1 if idx == 0 else 2
        blocks = []
        for i in range(blocks_per_stage[idx]):
            blocks.append(BottleneckBlock(in_channels if i == 0 else out_channels, out_channels,
                                          bottleneck_channels=bottleneck_channels,
                                          stride=first_stride if i == 0 else 1, num_groups=num_groups, norm=norm,
                                          stride_in_1x1=stride_in_1x1))
        stages.append(blocks)
        in_channels, out_channels, bottleneck_channels = out_channels, out_channels * 2, bottleneck_channels * 2
    return ResNet(stem, stages, out_features=list(out_features))
