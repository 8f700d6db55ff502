"""HRNet, the high-resolution network: parallel multi-resolution branches with repeated fusion.

Papers: "Deep High-Resolution Representation Learning for Visual Recognition", Wang et al., TPAMI 2020,
arXiv:1908.07919 (HRNetV2 / V2p); "High-Resolution Representations for Labeling Pixels and Regions", Sun et al.,
arXiv:1904.04514. Original code: HRNet/HRNet-Semantic-Segmentation (MIT); also in timm and mmsegmentation.

Written for seglab from the facts of those sources. A stem of two 3x3 stride-2 convs (BN, ReLU) brings the input
to stride 4; stage 1 is a chain of bottleneck blocks (expansion 4) on one branch; before each of stages 2-4 a
transition adds a branch at half the resolution of the last one (3x3 stride-2 conv + BN + ReLU on the last branch)
and adapts existing branches whose width changes (3x3 conv + BN + ReLU). Each stage repeats multi-resolution modules:
basic blocks on every branch, then a fuse that gives every output branch `i` the sum over input branches `j` of
    j == i: the branch itself,
    j > i: 1x1 conv + BN, upsampled to branch i's size,
    j < i: (i - j) 3x3 stride-2 conv + BN steps (ReLU between, not after the last),
followed by a ReLU. Outputs are the four branches of stage 4 (strides 4, 8, 16, 32); `neck` optionally turns them
into the HRNetV2 (V1, V2, V2p) representations.

Numerics that differ between the sources, as options: the official segmentation code upsamples in the fuse with
bilinear interpolation to the target size (`align_corners=True` in the HRNet-OCR branch, `ALIGN_CORNERS`; False in
older `seg_hrnet.py` versions), timm (the classification code) with nearest upsampling by a scale factor, mmseg (0.x
and 1.x) bilinearly by the scale factor 2^(j - i) (`Upsample(scale_factor=2**(j - i), mode='bilinear',
align_corners=False)`) and then bilinearly again to the target size (`resize(..., size=x[i].shape[2:])`).
`fuse_upsample` picks the mode: `bilinear` and `nearest` interpolate to the target size directly, so that odd input
sizes work (with nearest upsampling and sizes whose branches halve exactly, timm agrees); `bilinear_scale` is mmseg's
two steps, which differ from one bilinear step only where a branch is not exactly half the one above (odd sizes).
BN momentum (training only) is 0.1 in the HRNet-OCR branch, timm and mmseg, 0.01 in the pytorch-v1.1-era
`seg_hrnet.py`: `bn_momentum`.

Module names are seglab's (see `seglab.convert.hrnet` for the official and timm layouts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from seglab.backbones.base import FeatureInfo
from seglab.layers import ConvNormAct

STEM_CHANNELS = 64
BOTTLENECK_EXPANSION = 4
FUSE_UPSAMPLE_MODES = ("bilinear", "nearest", "bilinear_scale")
NECKS = ("none", "v1", "v2", "v2p")

NormLayer = Callable[[int], nn.Module]


@dataclass(frozen=True)
class HRNetStage:
    """One stage: `num_modules` multi-resolution modules with `blocks[b]` blocks of width `channels[b]` on branch b.

    Stage 1 has a single branch of bottleneck blocks (`channels` is the bottleneck width, output 4x that);
    stages 2-4 have 2, 3, 4 branches of basic blocks.
    """

    num_modules: int
    blocks: tuple[int, ...]
    channels: tuple[int, ...]


@dataclass(frozen=True)
class HRNetConfig:
    """Stage settings of one HRNet variant (stage 1 bottlenecks, stages 2-4 basic blocks)."""

    stages: tuple[HRNetStage, HRNetStage, HRNetStage, HRNetStage]

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of the four stage-4 branches."""
        return self.stages[3].channels


def _standard(width: int) -> HRNetConfig:
    """W18/W32/W48 (official segmentation configs, timm `hrnet_w*`, mmseg `hr18`/`hr48`)."""
    c = width
    return HRNetConfig((
        HRNetStage(1, (4,), (64,)),
        HRNetStage(1, (4, 4), (c, 2 * c)),
        HRNetStage(4, (4, 4, 4), (c, 2 * c, 4 * c)),
        HRNetStage(3, (4, 4, 4, 4), (c, 2 * c, 4 * c, 8 * c)),
    ))


HRNET_CONFIGS: dict[str, HRNetConfig] = {
    # W18-Small-v1: official `seg_hrnet_w18_small_v1` config, timm `hrnet_w18_small`
    "w18s_v1": HRNetConfig((
        HRNetStage(1, (1,), (32,)),
        HRNetStage(1, (2, 2), (16, 32)),
        HRNetStage(1, (2, 2, 2), (16, 32, 64)),
        HRNetStage(1, (2, 2, 2, 2), (16, 32, 64, 128)),
    )),
    # W18-Small-v2: official `seg_hrnet_w18_small_v2` config, timm `hrnet_w18_small_v2`, mmseg `hr18s`
    "w18s": HRNetConfig((
        HRNetStage(1, (2,), (64,)),
        HRNetStage(1, (2, 2), (18, 36)),
        HRNetStage(3, (2, 2, 2), (18, 36, 72)),
        HRNetStage(2, (2, 2, 2, 2), (18, 36, 72, 144)),
    )),
    "w18": _standard(18),
    "w32": _standard(32),
    "w48": _standard(48),
}


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection, ReLU after the sum (expansion 1).

    Args:
        in_channels: input channels.
        channels: output channels.
        norm_layer: BatchNorm constructor.
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, channels, 3, norm_layer=norm_layer)
        self.conv2 = ConvNormAct(channels, channels, 3, norm_layer=norm_layer, act_layer=None)
        # a 1x1 projection only where the width changes (never in the published configs' branches)
        self.downsample = (ConvNormAct(in_channels, channels, 1, norm_layer=norm_layer, act_layer=None)
                           if in_channels != channels else None)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.conv2(self.conv1(x)) + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) conv + BN layers with a residual connection, ReLU after the sum.

    Args:
        in_channels: input channels.
        channels: bottleneck width; the output has `4 * channels`.
        norm_layer: BatchNorm constructor.
    """

    expansion = BOTTLENECK_EXPANSION

    def __init__(self, in_channels: int, channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = ConvNormAct(in_channels, channels, 1, norm_layer=norm_layer)
        self.conv2 = ConvNormAct(channels, channels, 3, norm_layer=norm_layer)
        self.conv3 = ConvNormAct(channels, out_channels, 1, norm_layer=norm_layer, act_layer=None)
        self.downsample = (ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=None)
                           if in_channels != out_channels else None)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.conv3(self.conv2(self.conv1(x))) + shortcut)


def _downsample_chain(in_channels: int, out_channels: int, steps: int, norm_layer: NormLayer) -> nn.Sequential:
    """`steps` 3x3 stride-2 conv + BN layers; ReLU after all but the last, which also changes the width."""
    layers = [ConvNormAct(in_channels, in_channels, 3, stride=2, norm_layer=norm_layer) for _ in range(steps - 1)]
    layers.append(ConvNormAct(in_channels, out_channels, 3, stride=2, norm_layer=norm_layer, act_layer=None))
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """A multi-resolution module: basic blocks on every branch, then the fuse (see the module docstring).

    Args:
        in_channels: channels of each input branch.
        channels: channels of each branch (and output).
        blocks: basic blocks per branch.
        norm_layer: BatchNorm constructor.
        fuse_upsample: `bilinear` or `nearest` interpolation of the upsampled terms to the target size, or
            `bilinear_scale` (bilinear by 2^(j - i), then bilinear to the target size).
        align_corners: `align_corners` of the bilinear upsampling.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: Sequence[int],
        blocks: Sequence[int],
        norm_layer: NormLayer,
        fuse_upsample: str = "bilinear",
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.fuse_upsample = fuse_upsample
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(in_ch if k == 0 else ch, ch, norm_layer) for k in range(n)))
            for in_ch, ch, n in zip(in_channels, channels, blocks, strict=True)
        )
        num = len(channels)
        self.fuse_layers = nn.ModuleList()
        if num == 1:
            return
        for i in range(num):
            row = nn.ModuleList()
            for j in range(num):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(ConvNormAct(channels[j], channels[i], 1, norm_layer=norm_layer, act_layer=None))
                else:
                    row.append(_downsample_chain(channels[j], channels[i], i - j, norm_layer))
            self.fuse_layers.append(row)
        self.act = nn.ReLU()

    def _upsample(self, x: torch.Tensor, size: torch.Size, factor: int) -> torch.Tensor:
        # the target size, not a scale factor: a branch of an odd-sized map is not exactly half the one above
        if self.fuse_upsample == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        if self.fuse_upsample == "bilinear_scale":
            # NOTE: mmseg scales by 2^(j - i) first and resizes the result to the branch size after (a no-op where
            # the branches halve exactly); two bilinear steps, as in its `Upsample` + `resize`
            scaled = (x.shape[-2] * factor, x.shape[-1] * factor)
            x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=self.align_corners)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(t) for branch, t in zip(self.branches, x, strict=True)]
        if len(x) == 1:
            return x
        fused = []
        for i, row in enumerate(self.fuse_layers):
            # summed in branch order as in the reference codes, so float32 rounding matches theirs
            terms = [x[j] if j == i else layer(x[j]) if j < i
                     else self._upsample(layer(x[j]), x[i].shape[-2:], 2 ** (j - i)) for j, layer in enumerate(row)]
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            fused.append(self.act(total))
        return fused


def _transition(pre: Sequence[int], cur: Sequence[int], norm_layer: NormLayer) -> nn.ModuleList:
    """Adapts the previous stage's branches to the next: a 3x3 conv where a width changes, identity elsewhere,
    and a new half-resolution branch from the last one (3x3 stride-2 conv + BN + ReLU)."""
    layers = nn.ModuleList()
    for i, ch in enumerate(cur):
        if i < len(pre):
            layers.append(ConvNormAct(pre[i], ch, 3, norm_layer=norm_layer) if pre[i] != ch else nn.Identity())
        else:
            steps = i + 1 - len(pre)  # one step in every published config (one new branch per stage)
            layers.append(nn.Sequential(*(
                ConvNormAct(pre[-1], ch if k == steps - 1 else pre[-1], 3, stride=2, norm_layer=norm_layer)
                for k in range(steps)
            )))
    return layers


class HRNetNeck(nn.Module):
    """The HRNetV1/V2/V2p representations of the four stage-4 branches (parameter-free).

    `none`: the four branches as they are; `v1`: the highest-resolution branch only; `v2`: all branches resized
    (bilinear) to the first's size and concatenated; `v2p`: the V2 map plus copies average-pooled by 2, 4 and 8
    (strides 8, 16, 32; the last window of an odd size is partial, so the sizes are those of the branches).

    Args:
        mode: one of `NECKS`.
        align_corners: `align_corners` of the V2 resize.
    """

    def __init__(self, mode: str = "none", align_corners: bool = True) -> None:
        super().__init__()
        if mode not in NECKS:
            raise ValueError(f"HRNet neck must be one of {', '.join(NECKS)}, got {mode!r}")
        self.mode = mode
        self.align_corners = align_corners

    def feature_info(self, branches: Sequence[FeatureInfo]) -> list[FeatureInfo]:
        """The outputs' channels and strides, given those of the branches."""
        if self.mode == "none":
            return list(branches)
        if self.mode == "v1":
            return [branches[0]]
        total = sum(b.channels for b in branches)
        if self.mode == "v2":
            return [FeatureInfo(total, branches[0].stride)]
        return [FeatureInfo(total, branches[0].stride * 2**k) for k in range(len(branches))]

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.mode == "none":
            return x
        if self.mode == "v1":
            return [x[0]]
        size = x[0].shape[-2:]
        concat = torch.cat([x[0]] + [
            F.interpolate(t, size=size, mode="bilinear", align_corners=self.align_corners) for t in x[1:]
        ], dim=1)
        if self.mode == "v2":
            return [concat]
        return [concat] + [F.avg_pool2d(concat, 2**k, 2**k, ceil_mode=True) for k in range(1, len(x))]


class HRNet(nn.Module):
    """HRNet backbone: stem, stage 1 (bottlenecks), transitions and stages 2-4 (multi-resolution modules).

    Args:
        config: stage settings (see `HRNET_CONFIGS`).
        in_channels: input image channels.
        bn_momentum: momentum of every BatchNorm.
        fuse_upsample: `bilinear` (official segmentation code), `nearest` (timm) or `bilinear_scale` (mmseg)
            upsampling in the fuse layers (see the module docstring).
        align_corners: `align_corners` of the bilinear fuse upsampling and of the neck's resize.
        neck: `none` (the four branches), `v1`, `v2` or `v2p` (see `HRNetNeck`).
    """

    def __init__(
        self,
        config: HRNetConfig,
        in_channels: int = 3,
        bn_momentum: float = 0.1,
        fuse_upsample: str = "bilinear",
        align_corners: bool = True,
        neck: str = "none",
    ) -> None:
        super().__init__()
        if fuse_upsample not in FUSE_UPSAMPLE_MODES:
            raise ValueError(f"fuse_upsample must be one of {', '.join(FUSE_UPSAMPLE_MODES)}, got {fuse_upsample!r}")
        norm_layer = partial(nn.BatchNorm2d, momentum=bn_momentum)
        self.config = config
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", ConvNormAct(in_channels, STEM_CHANNELS, 3, stride=2, norm_layer=norm_layer))
        self.stem.add_module("conv2", ConvNormAct(STEM_CHANNELS, STEM_CHANNELS, 3, stride=2, norm_layer=norm_layer))

        stage1 = config.stages[0]
        width = stage1.channels[0]
        self.layer1 = nn.Sequential(*(
            Bottleneck(STEM_CHANNELS if k == 0 else width * BOTTLENECK_EXPANSION, width, norm_layer)
            for k in range(stage1.blocks[0])
        ))
        pre: tuple[int, ...] = (width * BOTTLENECK_EXPANSION,)
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for stage in config.stages[1:]:
            self.transitions.append(_transition(pre, stage.channels, norm_layer))
            self.stages.append(nn.Sequential(*(
                HRModule(stage.channels, stage.channels, stage.blocks, norm_layer, fuse_upsample, align_corners)
                for _ in range(stage.num_modules)
            )))
            pre = stage.channels
        self.neck = HRNetNeck(neck, align_corners)
        branches = [FeatureInfo(ch, 4 * 2**b) for b, ch in enumerate(config.widths)]
        self.feature_info: list[FeatureInfo] = self.neck.feature_info(branches)

    def forward_branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage-4 branch outputs (strides 4, 8, 16, 32), before the neck."""
        feats = [self.layer1(self.stem(x))]
        for transition, stage in zip(self.transitions, self.stages, strict=True):
            # existing branches pass through (or are adapted); the new one grows from the lowest resolution
            feats = [layer(feats[min(i, len(feats) - 1)]) for i, layer in enumerate(transition)]
            feats = stage(feats)
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.forward_branches(x))
