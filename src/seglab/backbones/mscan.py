"""MSCAN, the SegNeXt encoder (multi-scale convolutional attention network).

Paper: "SegNeXt: Rethinking Convolutional Attention Design for Semantic Segmentation", Guo et al., NeurIPS 2022,
arXiv:2209.08575. Original code: Visual-Attention-Network/SegNeXt (Apache-2.0); also in mmsegmentation 1.x.

Written for seglab from the paper and the facts of the original code: a stem of two 3x3 stride-2 convs (BN,
GELU between), 3x3 stride-2 conv + BN patch embeddings for stages 2-4, and blocks of
`x + ls1 * Attn(BN(x))`, `x + ls2 * Mlp(BN(x))` where Attn = 1x1 -> GELU -> MSCA -> 1x1 plus an inner residual
to its input, and MSCA = a 5x5 depth-wise conv plus three depth-wise strip-conv branches (1x7/7x1, 1x11/11x1,
1x21/21x1), summed and mixed by a 1x1 conv whose output multiplies the input as attention weights. Each stage
ends with a LayerNorm over channels. Module names are seglab's (see `seglab.convert.segnext` for the official
and mmseg layouts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seglab.backbones.base import FeatureInfo
from seglab.layers import DropPath, drop_path_rates, nchw_to_nlc, nlc_to_nchw
from seglab.layers.init import init_weights

STRIP_KERNELS = (7, 11, 21)  # lengths of the three strip-conv branches of MSCA


class StemConv(nn.Module):
    """Stage-1 embedding: 3x3/2 conv -> BN -> GELU -> 3x3/2 conv -> BN (output stride 4).

    The BNs are named `bn1`/`bn2`, not `norm*`: the official recipe's `norm` weight-decay rule (a substring
    match on parameter names) does not reach the stem's BNs (`patch_embed1.proj.1`), and with these names it does
    not reach ours either.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels // 2, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_channels // 2, out_channels, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class PatchEmbed(nn.Module):
    """Stages 2-4: 3x3 stride-2 conv (padding 1) then BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class MSCA(nn.Module):
    """Multi-scale convolutional attention: depth-wise 5x5, three strip branches, 1x1 mix; `out = mix * input`.

    Branch `i` is a depth-wise `1 x k` conv (along the width) then a `k x 1` conv (along the height), applied to
    the 5x5 conv's output, for `k` in `STRIP_KERNELS`; the 5x5 output itself is part of the sum.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.square = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.horizontal = nn.ModuleList(nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim)
                                        for k in STRIP_KERNELS)
        self.vertical = nn.ModuleList(nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim)
                                      for k in STRIP_KERNELS)
        self.mix = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.square(x)
        summed = local
        for horizontal, vertical in zip(self.horizontal, self.vertical, strict=True):
            summed = summed + vertical(horizontal(local))
        return self.mix(summed) * x


class SpatialAttention(nn.Module):
    """1x1 conv -> GELU -> MSCA -> 1x1 conv, plus a residual to the (normalised) input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.msca = MSCA(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.msca(self.act(self.proj_1(x)))) + x


class ConvMlp(nn.Module):
    """1x1 conv -> 3x3 depth-wise conv -> GELU -> 1x1 conv (no activation between fc1 and the depth-wise conv)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class MSCABlock(nn.Module):
    """`x + ls1 * Attn(BN(x))` then `x + ls2 * Mlp(BN(x))`, each branch under stochastic depth.

    Args:
        dim: channels.
        mlp_ratio: hidden width of the Mlp relative to `dim`.
        drop: dropout inside the Mlp.
        drop_path: stochastic-depth rate of both branches.
        layer_scale_init: initial value of the per-channel layer scales.
    """

    def __init__(
        self, dim: int, mlp_ratio: float, drop: float = 0.0, drop_path: float = 0.0, layer_scale_init: float = 1e-2
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """Embedding (stem or strided patch embedding), blocks, and the stage-end LayerNorm over channels."""

    def __init__(self, patch_embed: nn.Module, blocks: list[MSCABlock], dim: int) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        height, width = x.shape[-2:]
        return nlc_to_nchw(self.norm(nchw_to_nlc(x)), height, width)


@dataclass(frozen=True)
class MSCANConfig:
    """Hyper-parameters of one MSCAN variant (the official SegNeXt configs)."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    drop_path_rate: float
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)


MSCAN_CONFIGS: dict[str, MSCANConfig] = {
    "t": MSCANConfig(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), drop_path_rate=0.1),
    "s": MSCANConfig(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), drop_path_rate=0.1),
    "b": MSCANConfig(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), drop_path_rate=0.1),
    "l": MSCANConfig(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), drop_path_rate=0.3),
}


class MSCAN(nn.Module):
    """MSCAN encoder: four stages at strides 4, 8, 16, 32, each output LayerNorm-ed, NCHW.

    Args:
        config: the variant's hyper-parameters.
        in_channels: input image channels.
        drop_rate: dropout inside the Mlps.
        drop_path_rate: final stochastic-depth rate of the linear schedule; None takes the variant's.
        layer_scale_init: initial value of the layer scales (1e-2 in the original).
        out_indices: which stages to return.
    """

    def __init__(
        self,
        config: MSCANConfig,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
        layer_scale_init: float = 1e-2,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        rate = config.drop_path_rate if drop_path_rate is None else drop_path_rate
        rates = drop_path_rates(rate, config.depths)
        stages, infos, channels = [], [], in_channels
        for i, dim in enumerate(config.embed_dims):
            patch_embed = StemConv(channels, dim) if i == 0 else PatchEmbed(channels, dim)
            blocks = [MSCABlock(dim, config.mlp_ratios[i], drop_rate, rates[i][j], layer_scale_init)
                      for j in range(config.depths[i])]
            stages.append(Stage(patch_embed, blocks, dim))
            infos.append(FeatureInfo(channels=dim, stride=2 ** (i + 2)))
            channels = dim
        self.stages = nn.ModuleList(stages)
        self.feature_info = [infos[i] for i in self.out_indices]
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Channels-last: CPU depth-wise convs (most of MSCAN's layers) run ~10x faster on NHWC than on NCHW.
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs

