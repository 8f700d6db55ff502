"""AS-MLP, the axial shifted MLP backbone, for dense prediction.

Paper: "AS-MLP: An Axial Shifted MLP Architecture for Vision", Lian et al., ICLR 2022, arXiv:2107.08391. Original
code: svip-lab/AS-MLP (`models/as_mlp.py`, classification) and svip-lab/AS-MLP-Semantic-Segmentation
(`mmseg/models/backbones/asmlp.py`, the UperNet backbone), both MIT License.

Written for seglab from the paper and the facts of the original code: a Swin-like hierarchy in NCHW throughout, where
every norm is `GroupNorm(1, C)` (statistics over (C, H, W) per sample, per-channel affine) and every token projection
is a 1x1 conv. A 4x4 stride-4 patch embedding with a norm; blocks of `x + axial_shift(norm1(x))`,
`x + mlp(norm2(x))`; the axial shift module projects (`conv1`, norm, GELU), shifts the channel groups along the width
and, separately, along the height, projects each (`conv2_1`, `conv2_2`, GELU), sums, normalises and projects
(`conv3`); patch merging (2x2 neighbours concatenated rows first, norm, 1x1 conv 4C -> 2C without bias) at the end of
stages 0-2; an output norm `norm{i}` per returned stage as in the segmentation code; optionally the ImageNet classifier
(`norm`, global average pool, `head`). Any input size: the image is zero-padded right/bottom to a multiple of 4 and
patch merging zero-pads odd sizes, as the segmentation code does.

What we changed: the shift is the pure-torch rule of the original (the released classifier runs it as a CuPy kernel,
the segmentation code as pad / chunk / roll / crop), written as one zero pad and one narrowed slice per channel group;
the result equals both. Module names are the original's, so checkpoints convert by a prefix strip
(`seglab.convert.asmlp`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seglab.backbones.base import FeatureInfo
from seglab.layers import DropPath, drop_path_rates
from seglab.layers.init import init_weights


@dataclass(frozen=True)
class ASMLPConfig:
    """Hyper-parameters of one AS-MLP variant (embedding width doubling per stage).

    Args:
        embed_dim: channels of the first stage (C); stage i has C * 2**i.
        depths: blocks per stage.
        shift_size: the axial shift's window S (odd); channel groups are shifted by S // 2 .. -(S // 2).
        mlp_ratio: hidden width of the MLP relative to the stage width.
        patch_size: side of the patch embedding's kernel and stride.
    """

    embed_dim: int
    depths: tuple[int, ...]
    shift_size: int = 5
    mlp_ratio: float = 4.0
    patch_size: int = 4


# the ImageNet classification configs (`configs/as_{tiny,small,base}_patch4_shift5_224.yaml`)
ASMLP_CONFIGS: dict[str, ASMLPConfig] = {
    "t": ASMLPConfig(embed_dim=96, depths=(2, 2, 6, 2)),
    "s": ASMLPConfig(embed_dim=96, depths=(2, 2, 18, 2)),
    "b": ASMLPConfig(embed_dim=128, depths=(2, 2, 18, 2)),
}

# constructor options of the UperNet ADE20K configs of AS-MLP-Semantic-Segmentation
# NOTE: the S config file is named "shift5" but sets shift_size=3.
ASMLP_SEG_OPTIONS: dict[str, dict[str, float | int]] = {
    "t": {"drop_path_rate": 0.3},
    "s": {"drop_path_rate": 0.3, "shift_size": 3},
    "b": {"drop_path_rate": 0.5},
}


def axial_shift(x: torch.Tensor, shift_size: int, dim: int) -> torch.Tensor:
    """Shifts channel groups of an NCHW map along one spatial dimension, filling with zeros.

    Channels are split into groups of `g = ceil(C / S)` (the last group smaller; fewer than S groups when
    `(S - 1) * g >= C`, e.g. C=8, S=5 -> 4 groups); group k reads `s_k = S // 2 - k` positions further along `dim`:
    `out[:, c, h, w] = x[:, c, h + s_k, w]` for `dim=2`, `x[:, c, h, w + s_k]` for `dim=3`, zero outside the map.
    This is the original's rule (its CuPy kernel and its pad / chunk / roll / crop path agree).

    Args:
        x: (B, C, H, W) map.
        shift_size: S, odd and >= 1 (1 returns `x`).
        dim: 2 (height, the original's "td" shift) or 3 (width, "lr").

    Returns:
        A (B, C, H, W) map.
    """
    if x.ndim != 4:
        raise ValueError(f"axial_shift expects a (B, C, H, W) map, got shape {tuple(x.shape)}")
    if dim not in (2, 3):
        raise ValueError(f"axial_shift shifts along dim 2 (height) or 3 (width), got dim={dim}")
    if shift_size < 1 or shift_size % 2 == 0:
        raise ValueError(f"shift_size must be odd and >= 1, got {shift_size}")
    pad = shift_size // 2
    if pad == 0:
        return x
    channels, length = x.shape[1], x.shape[dim]
    group = -(-channels // shift_size)  # ceil(C / S); C // S would split differently
    padded = F.pad(x, (pad, pad) if dim == 3 else (0, 0, pad, pad))  # zeros beyond both borders
    # position p of group k reads padded index p + s_k + pad = p + 2 * pad - k
    parts = [padded[:, start : start + group].narrow(dim, 2 * pad - k, length)
             for k, start in enumerate(range(0, channels, group))]
    return torch.cat(parts, dim=1)


class AxialShift(nn.Module):
    """The token mixer: 1x1 conv, norm, GELU, then a width-shifted and a height-shifted branch (1x1 conv and GELU
    each), summed, normalised and projected by a last 1x1 conv.

    Args:
        dim: channels.
        shift_size: the shift window S (odd).
        bias: biases on the four 1x1 convs (the original's `as_bias`, True in every released model).
    """

    def __init__(self, dim: int, shift_size: int, bias: bool = True) -> None:
        super().__init__()
        if shift_size < 1 or shift_size % 2 == 0:
            raise ValueError(f"shift_size must be odd and >= 1, got {shift_size}")
        self.shift_size = shift_size
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.norm1 = nn.GroupNorm(1, dim)
        self.conv2_1 = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)  # after the width ("lr") shift
        self.conv2_2 = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)  # after the height ("td") shift
        self.norm2 = nn.GroupNorm(1, dim)
        self.conv3 = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        lr = self.act(self.conv2_1(axial_shift(x, self.shift_size, dim=3)))
        td = self.act(self.conv2_2(axial_shift(x, self.shift_size, dim=2)))
        return self.conv3(self.norm2(lr + td))

    def extra_repr(self) -> str:
        return f"shift_size={self.shift_size}"


class ConvMlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv, with dropout after each (the original's `Mlp`, keys `fc1`, `fc2`)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, kernel_size=1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class AxialShiftedBlock(nn.Module):
    """Pre-norm block: axial shift and MLP, each with a residual and stochastic depth.

    Args:
        dim: channels.
        shift_size: the shift window S (odd).
        mlp_ratio: MLP hidden width relative to `dim`.
        drop: dropout in the MLP.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(self, dim: int, shift_size: int, mlp_ratio: float, drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.axial_shift = AxialShift(dim, shift_size)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.axial_shift(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv `patch_size` x `patch_size`, stride `patch_size`, on the image zero-padded right/bottom to a multiple of
    the patch, then GroupNorm(1, C).

    Args:
        in_channels: image channels.
        embed_dim: output channels.
        patch_size: kernel and stride.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.GroupNorm(1, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = (-x.shape[-2]) % self.patch_size, (-x.shape[-1]) % self.patch_size
        if torch.compiler.is_exporting() or pad_h or pad_w:  # no branch on symbolic sizes
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated along channels in the order (row, col) = (0,0), (1,0), (0,1), (1,1), then
    GroupNorm(1, 4C) and a 1x1 conv 4C -> 2C without bias; odd sizes are zero-padded right/bottom first.

    Args:
        dim: input channels C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, 4 * dim)
        self.reduction = nn.Conv2d(4 * dim, 2 * dim, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 2C, ceil(H / 2), ceil(W / 2))."""
        batch, channels, height, width = x.shape
        if torch.compiler.is_exporting() or height % 2 or width % 2:  # no branch on symbolic sizes
            x = F.pad(x, (0, width % 2, 0, height % 2))
            height, width = height + height % 2, width + width % 2
        x = x.view(batch, channels, height // 2, 2, width // 2, 2)  # (B, C, H/2, row, W/2, col)
        # column offset outer, row offset inner, channels innermost: the original's [x0, x1, x2, x3] concat
        x = x.permute(0, 5, 3, 1, 2, 4).reshape(batch, 4 * channels, height // 2, width // 2)
        return self.reduction(self.norm(x))


class ASMLPStage(nn.Module):
    """Blocks at one resolution, then (stages 0-2) patch merging (the original's `BasicLayer`).

    Args:
        blocks: the stage's blocks.
        downsample: patch merging after the blocks, or None for the last stage.
    """

    def __init__(self, blocks: list[AxialShiftedBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, H, W) -> (the stage output before merging, the merged map for the next stage or None)."""
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class ASMLP(nn.Module):
    """AS-MLP backbone: four stages at strides 4, 8, 16, 32 with widths C, 2C, 4C, 8C.

    Module names are the original's: `patch_embed`, `layers.{i}.blocks.{j}`, `layers.{i}.downsample`, the
    segmentation code's output norms `norm{i}` (for the stages in `out_indices` only), and, with `num_classes`, the
    classifier's `norm` and `head`.

    Args:
        config: the variant's hyper-parameters.
        in_channels: input image channels.
        drop_path_rate: final stochastic-depth rate of the linear schedule over all blocks (the UperNet configs use
            0.3 for T and S, 0.5 for B: `ASMLP_SEG_OPTIONS`).
        drop_rate: dropout after the patch embedding and in the MLPs (0 in every released model).
        out_indices: which stages `forward` returns; stages after the last one listed are not run by `forward`.
        shift_size: overrides `config.shift_size` (3 for the AS-MLP-S segmentation model).
        num_classes: when an int, also builds the original ImageNet classifier (GroupNorm(1, 8C) `norm`, global
            average pool, Linear `head`) for `forward_classification`; None builds neither.
    """

    def __init__(
        self,
        config: ASMLPConfig,
        in_channels: int = 3,
        drop_path_rate: float = 0.3,
        drop_rate: float = 0.0,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        shift_size: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        num_stages = len(config.depths)
        if not out_indices or any(i not in range(num_stages) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of 0..{num_stages - 1}, got {out_indices}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes}")
        self.out_indices = tuple(out_indices)
        self.shift_size = config.shift_size if shift_size is None else shift_size
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(in_channels, config.embed_dim, config.patch_size)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, config.depths)
        stages, infos = [], []
        for i, depth in enumerate(config.depths):
            dim = config.embed_dim * 2**i
            blocks = [AxialShiftedBlock(dim, self.shift_size, config.mlp_ratio, drop=drop_rate, drop_path=rates[i][j])
                      for j in range(depth)]
            stages.append(ASMLPStage(blocks, PatchMerging(dim) if i < num_stages - 1 else None))
            infos.append(FeatureInfo(channels=dim, stride=config.patch_size * 2**i))
        self.layers = nn.ModuleList(stages)
        # the segmentation code's per-output norms, attributes `norm0`..`norm3` as in its checkpoints
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.GroupNorm(1, infos[i].channels))
        self.feature_info = [infos[i] for i in self.out_indices]
        if num_classes is not None:
            self.norm = nn.GroupNorm(1, infos[-1].channels)
            self.head = nn.Linear(infos[-1].channels, num_classes)
        # the original initialises only Linear layers (truncated normal, std 0.02); convs keep PyTorch's default
        self.apply(lambda module: init_weights(module, conv_fan_out=False))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_channels, H, W) -> one (B, C_i, ceil(H / s_i), ceil(W / s_i)) map per `out_indices`, s_i = 4 * 2**i,
        each after its output norm `norm{i}`."""
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for i, stage in enumerate(self.layers[: max(self.out_indices) + 1]):
            out, x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(out))
        return outs

    def forward_classification(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, num_classes) ImageNet logits: all stages, `norm`, global average pool,
        `head`. Requires `num_classes`."""
        if self.num_classes is None:
            raise RuntimeError("forward_classification needs the classifier: build ASMLP with num_classes=<int>")
        x = self.pos_drop(self.patch_embed(x))
        for stage in self.layers:
            out, x = stage(x)
        return self.head(self.norm(out).mean(dim=(2, 3)))
