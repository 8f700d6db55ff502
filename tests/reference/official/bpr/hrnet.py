"""The HRNet backbone of BPR's mmseg (0.7.0), with its ResNet blocks, written from the repository's files.

Follows chenhang98/BPR @ 9eafc3f1f6f6c4cfcdd0ceaf9f42bb2d07f90f4f : `mmseg/models/backbones/hrnet.py` (`HRModule`,
`HRNet`), `mmseg/models/backbones/resnet.py` (`BasicBlock`, `Bottleneck`, style "pytorch": stride on the 3x3 conv),
`mmseg/ops/wrappers.py` (`Upsample`, `resize`). Same module names (`conv1`, `bn1`, `conv2`, `bn2`, `layer1`,
`transition{1,2,3}`, `stage{2,3,4}.{m}.branches` / `.fuse_layers`) and forward. Quirks kept: a fuse term from a
coarser branch is conv 1x1 + BN + `Upsample(scale_factor=2**(j-i), mode='bilinear', align_corners=False)`, then
resized again bilinearly to the target branch's size (identity when the sizes halve exactly); a finer branch goes
through stride-2 3x3 conv + BN steps with ReLU between them but not after the last; the sum is ReLU'd; a stage's new
branch is built from the last existing branch. SyncBN is `nn.BatchNorm2d` (eval only); weight initialisation and
`with_cp` are left out.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import nn


def _bn(channels):
    return nn.BatchNorm2d(channels)  # norm_cfg SyncBN / BN: eps 1e-5, momentum 0.1


class Upsample(nn.Module):
    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        super().__init__()
        self.size = size
        self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x):
        size = [int(t * self.scale_factor) for t in x.shape[-2:]] if not self.size else self.size
        return F.interpolate(x, size, None, self.mode, self.align_corners)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class HRModule(nn.Module):
    def __init__(self, num_branches, blocks, num_blocks, in_channels, num_channels, multiscale_output=True):
        super().__init__()
        self.in_channels = in_channels
        self.num_branches = num_branches
        self.multiscale_output = multiscale_output
        self.branches = nn.ModuleList([self._make_one_branch(i, blocks, num_blocks, num_channels)
                                       for i in range(num_branches)])
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU(inplace=False)

    def _make_one_branch(self, branch_index, block, num_blocks, num_channels, stride=1):
        downsample = None
        out = num_channels[branch_index] * block.expansion
        if stride != 1 or self.in_channels[branch_index] != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_channels[branch_index], out, kernel_size=1, stride=stride, bias=False), _bn(out))
        layers = [block(self.in_channels[branch_index], num_channels[branch_index], stride, downsample=downsample)]
        self.in_channels[branch_index] = out
        layers += [block(out, num_channels[branch_index]) for _ in range(1, num_blocks[branch_index])]
        return nn.Sequential(*layers)

    def _make_fuse_layers(self):
        if self.num_branches == 1:
            return None
        in_channels = self.in_channels
        fuse_layers = []
        for i in range(self.num_branches if self.multiscale_output else 1):
            fuse_layer = []
            for j in range(self.num_branches):
                if j > i:
                    fuse_layer.append(nn.Sequential(
                        nn.Conv2d(in_channels[j], in_channels[i], kernel_size=1, stride=1, padding=0, bias=False),
                        _bn(in_channels[i]),
                        Upsample(scale_factor=2 ** (j - i), mode="bilinear", align_corners=False)))
                elif j == i:
                    fuse_layer.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(nn.Sequential(
                                nn.Conv2d(in_channels[j], in_channels[i], 3, stride=2, padding=1, bias=False),
                                _bn(in_channels[i])))
                        else:
                            steps.append(nn.Sequential(
                                nn.Conv2d(in_channels[j], in_channels[j], 3, stride=2, padding=1, bias=False),
                                _bn(in_channels[j]), nn.ReLU(inplace=False)))
                    fuse_layer.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(fuse_layer))
        return nn.ModuleList(fuse_layers)

    def forward(self, x):
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        for i in range(self.num_branches):
            x[i] = self.branches[i](x[i])
        x_fuse = []
        for i in range(len(self.fuse_layers)):
            y = 0
            for j in range(self.num_branches):
                if i == j:
                    y += x[j]
                elif j > i:
                    y = y + F.interpolate(self.fuse_layers[i][j](x[j]), size=x[i].shape[2:], mode="bilinear",
                                          align_corners=False)
                else:
                    y += self.fuse_layers[i][j](x[j])
            x_fuse.append(self.relu(y))
        return x_fuse


class HRNet(nn.Module):
    blocks_dict: ClassVar[dict] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}

    def __init__(self, extra, in_channels=3):
        super().__init__()
        self.extra = extra
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)

        self.stage1_cfg = extra["stage1"]
        block = self.blocks_dict[self.stage1_cfg["block"]]
        num_channels = self.stage1_cfg["num_channels"][0]
        stage1_out_channels = num_channels * block.expansion
        self.layer1 = self._make_layer(block, 64, num_channels, self.stage1_cfg["num_blocks"][0])
        pre = [stage1_out_channels]
        for s in (2, 3, 4):
            cfg = extra[f"stage{s}"]
            setattr(self, f"stage{s}_cfg", cfg)
            block = self.blocks_dict[cfg["block"]]
            channels = [c * block.expansion for c in cfg["num_channels"]]
            setattr(self, f"transition{s - 1}", self._make_transition_layer(pre, channels))
            stage, pre = self._make_stage(cfg, channels)
            setattr(self, f"stage{s}", stage)

    @property
    def norm1(self):
        return self.bn1

    @property
    def norm2(self):
        return self.bn2

    def _make_transition_layer(self, num_channels_pre_layer, num_channels_cur_layer):
        num_branches_pre = len(num_channels_pre_layer)
        layers = []
        for i, cur in enumerate(num_channels_cur_layer):
            if i < num_branches_pre:
                if cur != num_channels_pre_layer[i]:
                    layers.append(nn.Sequential(
                        nn.Conv2d(num_channels_pre_layer[i], cur, 3, stride=1, padding=1, bias=False), _bn(cur),
                        nn.ReLU(inplace=True)))
                else:
                    layers.append(None)
            else:
                steps = []
                for j in range(i + 1 - num_branches_pre):
                    cin = num_channels_pre_layer[-1]
                    cout = cur if j == i - num_branches_pre else cin
                    steps.append(nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), _bn(cout),
                                               nn.ReLU(inplace=True)))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def _make_layer(self, block, inplanes, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                _bn(planes * block.expansion))
        layers = [block(inplanes, planes, stride, downsample=downsample)]
        layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _make_stage(self, layer_config, in_channels, multiscale_output=True):
        block = self.blocks_dict[layer_config["block"]]
        modules = []
        for i in range(layer_config["num_modules"]):
            reset = not (not multiscale_output and i == layer_config["num_modules"] - 1)
            modules.append(HRModule(layer_config["num_branches"], block, layer_config["num_blocks"], in_channels,
                                    layer_config["num_channels"], reset))
        return nn.Sequential(*modules), in_channels

    def stages_forward(self, x):
        """Everything after `layer1`: the transitions and stages 2-4 (shared with `HRNetRefine`)."""
        x_list = [t(x) if t is not None else x for t in self.transition1]
        y_list = self.stage2(x_list)
        for s in (3, 4):
            transition = getattr(self, f"transition{s - 1}")
            x_list = [t(y_list[-1]) if t is not None else y_list[i] for i, t in enumerate(transition)]
            y_list = getattr(self, f"stage{s}")(x_list)
        return y_list

    def forward(self, x):
        x = self.relu(self.norm1(self.conv1(x)))
        x = self.relu(self.norm2(self.conv2(x)))
        return self.stages_forward(self.layer1(x))
