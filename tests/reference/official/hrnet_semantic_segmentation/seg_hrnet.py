"""HRNetV2 for semantic segmentation (`HighResolutionNet` + `last_layer`), written from the official code.

Follows HRNet/HRNet-Semantic-Segmentation, `lib/models/seg_hrnet.py` on two branches:
- HRNet-OCR @ 0bbb2880446ddff2d78f8dd7e8c4c610151d5a51 (the default branch): the fuse layers and the final resize use
  `F.interpolate(..., mode='bilinear', align_corners=ALIGN_CORNERS)`, a module-level global set from
  `config.MODEL.ALIGN_CORNERS` (default True in `lib/config/default.py`; several experiment files set False);
- pytorch-v1.1 @ 88419ab18813f2c9193985e2d4d31d3d07abe839 (and master @ 8037a7f, the same computation): the fuse layers
  call `F.interpolate(..., mode='bilinear')` and the final resize `F.upsample(..., mode='bilinear')`, both without
  `align_corners`, i.e. False since PyTorch 0.4.0. The only other difference in the forward: in pytorch-v1.1 a
  transition that exists for an existing branch reads `y_list[-1]` instead of `y_list[i]`, which no released config
  reaches (their existing branches never change width, so those transitions are None).
Here `align_corners` is a constructor argument instead of the global (`align_corners=False` is the pytorch-v1.1 code).
Same module names and forward; `init_weights` and the BN momentum (0.1 / 0.01, irrelevant in eval) are left out;
BatchNorm2d stands for the SyncBatchNorm / InPlaceABNSync(activation='none') of the branches (eps 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BatchNorm2d = nn.BatchNorm2d


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


blocks_dict = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


class HighResolutionModule(nn.Module):
    def __init__(self, num_branches, blocks, num_blocks, num_inchannels, num_channels, fuse_method,
                 multi_scale_output=True, align_corners=True):
        super().__init__()
        self.num_inchannels = num_inchannels
        self.fuse_method = fuse_method
        self.num_branches = num_branches
        self.multi_scale_output = multi_scale_output
        self.align_corners = align_corners
        self.branches = self._make_branches(num_branches, blocks, num_blocks, num_channels)
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU(inplace=True)

    def _make_one_branch(self, branch_index, block, num_blocks, num_channels, stride=1):
        downsample = None
        if stride != 1 or self.num_inchannels[branch_index] != num_channels[branch_index] * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.num_inchannels[branch_index], num_channels[branch_index] * block.expansion,
                          kernel_size=1, stride=stride, bias=False),
                BatchNorm2d(num_channels[branch_index] * block.expansion))
        layers = [block(self.num_inchannels[branch_index], num_channels[branch_index], stride, downsample)]
        self.num_inchannels[branch_index] = num_channels[branch_index] * block.expansion
        for _ in range(1, num_blocks[branch_index]):
            layers.append(block(self.num_inchannels[branch_index], num_channels[branch_index]))
        return nn.Sequential(*layers)

    def _make_branches(self, num_branches, block, num_blocks, num_channels):
        return nn.ModuleList(self._make_one_branch(i, block, num_blocks, num_channels) for i in range(num_branches))

    def _make_fuse_layers(self):
        if self.num_branches == 1:
            return None
        num_inchannels = self.num_inchannels
        fuse_layers = []
        for i in range(self.num_branches if self.multi_scale_output else 1):
            fuse_layer = []
            for j in range(self.num_branches):
                if j > i:  # 1x1 conv + BN, then upsampled in the forward
                    fuse_layer.append(nn.Sequential(
                        nn.Conv2d(num_inchannels[j], num_inchannels[i], 1, 1, 0, bias=False),
                        BatchNorm2d(num_inchannels[i])))
                elif j == i:
                    fuse_layer.append(None)
                else:  # i - j stride-2 3x3 convs; ReLU after all but the last
                    conv3x3s = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            conv3x3s.append(nn.Sequential(
                                nn.Conv2d(num_inchannels[j], num_inchannels[i], 3, 2, 1, bias=False),
                                BatchNorm2d(num_inchannels[i])))
                        else:
                            conv3x3s.append(nn.Sequential(
                                nn.Conv2d(num_inchannels[j], num_inchannels[j], 3, 2, 1, bias=False),
                                BatchNorm2d(num_inchannels[j]),
                                nn.ReLU(inplace=True)))
                    fuse_layer.append(nn.Sequential(*conv3x3s))
            fuse_layers.append(nn.ModuleList(fuse_layer))
        return nn.ModuleList(fuse_layers)

    def get_num_inchannels(self):
        return self.num_inchannels

    def forward(self, x):
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        for i in range(self.num_branches):
            x[i] = self.branches[i](x[i])
        x_fuse = []
        for i in range(len(self.fuse_layers)):
            y = x[0] if i == 0 else self.fuse_layers[i][0](x[0])
            for j in range(1, self.num_branches):
                if i == j:
                    y = y + x[j]
                elif j > i:
                    y = y + F.interpolate(self.fuse_layers[i][j](x[j]), size=[x[i].shape[-2], x[i].shape[-1]],
                                          mode="bilinear", align_corners=self.align_corners)
                else:
                    y = y + self.fuse_layers[i][j](x[j])
            x_fuse.append(self.relu(y))
        return x_fuse


class HighResolutionNet(nn.Module):
    """Args: `extra` = `config.MODEL.EXTRA` (STAGE1..STAGE4, FINAL_CONV_KERNEL), `num_classes` =
    `config.DATASET.NUM_CLASSES`, `align_corners` = `config.MODEL.ALIGN_CORNERS` (False for the pytorch-v1.1 code)."""

    def __init__(self, extra, num_classes, align_corners=True):
        super().__init__()
        self.align_corners = align_corners
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        self.stage1_cfg = extra["STAGE1"]
        num_channels = self.stage1_cfg["NUM_CHANNELS"][0]
        block = blocks_dict[self.stage1_cfg["BLOCK"]]
        self.layer1 = self._make_layer(block, 64, num_channels, self.stage1_cfg["NUM_BLOCKS"][0])
        stage1_out_channel = block.expansion * num_channels

        pre_stage_channels = [stage1_out_channel]
        for s in (2, 3, 4):
            cfg = extra[f"STAGE{s}"]
            block = blocks_dict[cfg["BLOCK"]]
            num_channels = [c * block.expansion for c in cfg["NUM_CHANNELS"]]
            setattr(self, f"stage{s}_cfg", cfg)
            setattr(self, f"transition{s - 1}", self._make_transition_layer(pre_stage_channels, num_channels))
            stage, pre_stage_channels = self._make_stage(cfg, num_channels, multi_scale_output=True)
            setattr(self, f"stage{s}", stage)

        last_inp_channels = int(sum(pre_stage_channels))
        kernel = extra["FINAL_CONV_KERNEL"]
        self.last_layer = nn.Sequential(
            nn.Conv2d(last_inp_channels, last_inp_channels, kernel_size=1, stride=1, padding=0),
            BatchNorm2d(last_inp_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(last_inp_channels, num_classes, kernel_size=kernel, stride=1, padding=1 if kernel == 3 else 0))

    def _make_transition_layer(self, num_channels_pre_layer, num_channels_cur_layer):
        num_branches_cur = len(num_channels_cur_layer)
        num_branches_pre = len(num_channels_pre_layer)
        transition_layers = []
        for i in range(num_branches_cur):
            if i < num_branches_pre:
                if num_channels_cur_layer[i] != num_channels_pre_layer[i]:
                    transition_layers.append(nn.Sequential(
                        nn.Conv2d(num_channels_pre_layer[i], num_channels_cur_layer[i], 3, 1, 1, bias=False),
                        BatchNorm2d(num_channels_cur_layer[i]),
                        nn.ReLU(inplace=True)))
                else:
                    transition_layers.append(None)
            else:  # a new branch: stride-2 3x3 convs from the last existing branch
                conv3x3s = []
                for j in range(i + 1 - num_branches_pre):
                    inchannels = num_channels_pre_layer[-1]
                    outchannels = num_channels_cur_layer[i] if j == i - num_branches_pre else inchannels
                    conv3x3s.append(nn.Sequential(
                        nn.Conv2d(inchannels, outchannels, 3, 2, 1, bias=False),
                        BatchNorm2d(outchannels),
                        nn.ReLU(inplace=True)))
                transition_layers.append(nn.Sequential(*conv3x3s))
        return nn.ModuleList(transition_layers)

    def _make_layer(self, block, inplanes, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                BatchNorm2d(planes * block.expansion))
        layers = [block(inplanes, planes, stride, downsample)]
        inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(inplanes, planes))
        return nn.Sequential(*layers)

    def _make_stage(self, layer_config, num_inchannels, multi_scale_output=True):
        num_modules = layer_config["NUM_MODULES"]
        block = blocks_dict[layer_config["BLOCK"]]
        modules = []
        for i in range(num_modules):
            reset_multi_scale_output = multi_scale_output or i != num_modules - 1
            modules.append(HighResolutionModule(
                layer_config["NUM_BRANCHES"], block, layer_config["NUM_BLOCKS"], num_inchannels,
                layer_config["NUM_CHANNELS"], layer_config["FUSE_METHOD"], reset_multi_scale_output,
                align_corners=self.align_corners))
            num_inchannels = modules[-1].get_num_inchannels()
        return nn.Sequential(*modules), num_inchannels

    def _transition(self, transition, y_list, num_prev_branches, num_branches):
        x_list = []
        for i in range(num_branches):
            if transition[i] is not None:
                x_list.append(transition[i](y_list[i] if i < num_prev_branches else y_list[-1]))
            else:
                x_list.append(y_list[i])
        return x_list

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)

        x_list = [self.transition1[i](x) if self.transition1[i] is not None else x
                  for i in range(self.stage2_cfg["NUM_BRANCHES"])]
        y_list = self.stage2(x_list)
        y_list = self.stage3(self._transition(self.transition2, y_list, self.stage2_cfg["NUM_BRANCHES"],
                                              self.stage3_cfg["NUM_BRANCHES"]))
        x = self.stage4(self._transition(self.transition3, y_list, self.stage3_cfg["NUM_BRANCHES"],
                                         self.stage4_cfg["NUM_BRANCHES"]))

        x0_h, x0_w = x[0].size(2), x[0].size(3)
        ups = [F.interpolate(x[k], size=(x0_h, x0_w), mode="bilinear", align_corners=self.align_corners)
               for k in (1, 2, 3)]
        return self.last_layer(torch.cat([x[0], *ups], 1))

    def forward_branches(self, x):
        """The four stage-4 branches (the tensors the forward concatenates), for per-level comparisons."""
        features = []
        handle = self.stage4.register_forward_hook(lambda module, args, out: features.extend(out))
        try:
            self(x)
        finally:
            handle.remove()
        return features
