"""CycleMLP, the MLP-like pyramid backbone with Cycle Fully-Connected layers, for dense prediction.

Paper: "CycleMLP: A MLP-like Architecture for Dense Prediction", Chen et al., ICLR 2022, arXiv:2107.10224. Original
code: ShoufaChen/CycleMLP (`cycle_mlp.py`, MIT License).

Written for seglab from the paper and the facts of the original code: a 7x7 stride-4 (padding 2) conv stem without a
norm; four stages of blocks `x + mixer(norm1(x))`, `x + mlp(norm2(x))` on channels-last (B, H, W, C) maps, with
LayerNorm (eps 1e-5) and a Linear -> GELU -> Linear MLP; a 3x3 stride-2 (padding 1) conv with bias between stages. The
token mixer sums three branches, two Cycle FCs (`sfc_h`, span (1, 3), mixes along the width; `sfc_w`, span (3, 1),
along the height) and a channel FC without bias (`mlp_c`), weighted per channel by a softmax over the branches that a
small MLP (`reweight`, C -> C/4 -> 3C) computes from their spatial mean, then projects (`proj`). Each returned stage
gets its own output LayerNorm (the original's dense-prediction `norm0/2/4/6`); optionally the ImageNet classifier
(`norm`, average pool, `head`).

What we changed: the original runs each Cycle FC as torchvision's `deform_conv2d` with fixed integer offsets and a 1x1
kernel. Sampling at an integer offset is a shift of each channel with zero fill, so `CycleFC` is written as one zero
pad, one gather (channel c reads position p + offset_c) and one Linear, with no deformable-conv op; the result equals
`deform_conv2d`. Module names are seglab's (`seglab.convert.cyclemlp` maps the original `network.{k}` layout):
`stages.{i}.downsample` (the 3x3 conv before stage i, i >= 1), `stages.{i}.blocks.{j}` with the original block and
mixer names, `out_norms.{i}`. The per-channel offsets stay as the persistent buffer `offset` of the original, so its
checkpoints keep their keys; a loaded `offset` must equal the original's formula.

The Swin-style CycleMLP-T/S/B of the README (28M / 50M / 88M) are not defined in the released code (the repository
holds only B1-B5; CycleMLP#15 asks for the Swin-style code, unanswered), so they are not built here.
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
class CycleMLPConfig:
    """Hyper-parameters of one CycleMLP variant (every stage boundary downsamples by 2).

    Args:
        depths: blocks per stage (the original's `layers`).
        embed_dims: channels per stage.
        mlp_ratios: hidden width of each stage's MLP relative to the stage width.
    """

    depths: tuple[int, ...]
    embed_dims: tuple[int, ...]
    mlp_ratios: tuple[float, ...]


# the PVT-style variants of `cycle_mlp.py` (`CycleMLP_B1` .. `CycleMLP_B5`, all with transitions [True] * 4)
CYCLEMLP_CONFIGS: dict[str, CycleMLPConfig] = {
    "b1": CycleMLPConfig(depths=(2, 2, 4, 2), embed_dims=(64, 128, 320, 512), mlp_ratios=(4, 4, 4, 4)),
    "b2": CycleMLPConfig(depths=(2, 3, 10, 3), embed_dims=(64, 128, 320, 512), mlp_ratios=(4, 4, 4, 4)),
    "b3": CycleMLPConfig(depths=(3, 4, 18, 3), embed_dims=(64, 128, 320, 512), mlp_ratios=(8, 8, 4, 4)),
    "b4": CycleMLPConfig(depths=(3, 8, 27, 3), embed_dims=(64, 128, 320, 512), mlp_ratios=(8, 8, 4, 4)),
    "b5": CycleMLPConfig(depths=(3, 4, 24, 3), embed_dims=(96, 192, 384, 768), mlp_ratios=(4, 4, 4, 4)),
}


def cycle_offsets(channels: int, kernel_size: tuple[int, int]) -> torch.Tensor:
    """The original's fixed per-channel sampling offsets of a Cycle FC.

    With span S (the kernel dimension that is not 1) and `start = S // 2`, channel c reads
    `(c + start) mod S - S // 2` positions further along the span's axis: for S = 3 the channels cycle 0, +1, -1;
    for S = 7: 0, 1, 2, 3, -3, -2, -1.

    Args:
        channels: input channels C.
        kernel_size: the span (S_H, S_W); one of the two must be 1.

    Returns:
        A (1, 2C, 1, 1) float tensor of (dy, dx) pairs per channel, torchvision's offset layout.
    """
    span_h, span_w = kernel_size
    if span_h != 1 and span_w != 1:
        raise ValueError(f"a Cycle FC spans one axis: one of kernel_size {kernel_size} must be 1")
    span = span_h * span_w
    shift = (torch.arange(channels) + span // 2) % span - span // 2  # (C,)
    offset = torch.zeros(channels, 2)
    offset[:, 0 if span_h > 1 else 1] = shift.float()  # (C, (dy, dx))
    return offset.view(1, 2 * channels, 1, 1)


class CycleFC(nn.Module):
    """Cycle Fully-Connected layer on channels-last maps: each input channel shifted along one axis by its fixed
    offset (zero where it reads outside the map), then a fully-connected layer over channels.

    `out[b, y, x, :] = W @ s + bias` with `s[c] = in[b, y + dy_c, x + dx_c, c]` (0 outside), the offsets of
    `cycle_offsets`; this equals the original's `deform_conv2d` with those offsets and a 1x1 kernel.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: the span (S_H, S_W) of the cycle, one of them 1: (1, 3) mixes along the width, (3, 1) along the
            height (the original's "stepsize", not a conv kernel).
        bias: learned bias (True in every use of the original).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], bias: bool = True) -> None:
        super().__init__()
        kernel_size = (int(kernel_size[0]), int(kernel_size[1]))
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.span = kernel_size[0] * kernel_size[1]
        self.axis = 1 if kernel_size[0] > 1 else 2  # the shifted dimension of a (B, H, W, C) map
        # the original's (C_out, C_in, 1, 1) conv weight, so that its checkpoints keep their shapes
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # persistent, as in the original: its checkpoints hold it; forward recomputes the shifts from the ints
        self.register_buffer("offset", cycle_offsets(in_channels, kernel_size))
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel shift alone: (B, H, W, C) -> (B, H, W, C), zero-filled."""
        pad, length = self.span // 2, x.shape[self.axis]
        channel = torch.arange(self.in_channels, device=x.device)
        # position p of channel c reads padded position p + pad + offset_c, in [0, length + 2 * pad)
        source = (channel + self.span // 2) % self.span - self.span // 2 + pad  # (C,)
        index = torch.arange(length, device=x.device)[:, None] + source  # (L, C)
        if self.axis == 1:
            padded = F.pad(x, (0, 0, 0, 0, pad, pad))  # zeros above and below
            index = index[None, :, None, :]  # (1, H, 1, C)
        else:
            padded = F.pad(x, (0, 0, pad, pad))  # zeros left and right
            index = index[None, None, :, :]  # (1, 1, W, C)
        return torch.gather(padded, self.axis, index.expand(x.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C_in) -> (B, H, W, C_out)."""
        return F.linear(self.shift(x), self.weight.flatten(1), self.bias)  # weight (C_out, C_in, 1, 1) -> 2-D

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "offset"
        if key in state_dict and not state_dict[key].is_meta and state_dict[key].shape == self.offset.shape:
            expected = cycle_offsets(self.in_channels, self.kernel_size)
            if not torch.equal(state_dict[key].detach().float().cpu(), expected):
                error_msgs.append(f"{key}: the offsets differ from the original's fixed Cycle FC offsets for "
                                  f"{self.in_channels} channels and span {self.kernel_size}; this layer computes its "
                                  f"shifts from that formula and cannot honour other offsets")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
                + (", bias=False" if self.bias is None else ""))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (the original's `Mlp`; its dropout is 0 in every use and is left out)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim if out_dim is None else out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CycleTokenMixer(nn.Module):
    """The CycleMLP token mixer (the original's `CycleMLP` module): width and height Cycle FCs and a channel FC,
    mixed by a per-channel softmax over the three branches, then projected.

    Args:
        dim: channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp_c = nn.Linear(dim, dim, bias=False)  # NOTE: the original's qkv_bias=False
        # NOTE: the original's names are crossed: `sfc_h` (span (1, 3)) mixes along the width, `sfc_w` the height
        self.sfc_h = CycleFC(dim, dim, (1, 3))
        self.sfc_w = CycleFC(dim, dim, (3, 1))
        self.reweight = Mlp(dim, dim // 4, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        batch, _, _, channels = x.shape
        h, w, c = self.sfc_h(x), self.sfc_w(x), self.mlp_c(x)
        weights = self.reweight((h + w + c).mean(dim=(1, 2)))  # (B, 3C)
        # NOTE: the 3C vector is channel-major (element 3c + k weighs branch k of channel c): (B, C, 3), not (B, 3, C)
        weights = weights.view(batch, channels, 3).softmax(dim=-1)[:, None, None]  # (B, 1, 1, C, 3)
        return self.proj(h * weights[..., 0] + w * weights[..., 1] + c * weights[..., 2])


class CycleBlock(nn.Module):
    """Pre-norm block: token mixer and MLP, each with a residual and stochastic depth (the original's `skip_lam` is
    1, so its division of the branches is left out).

    Args:
        dim: channels.
        mlp_ratio: MLP hidden width relative to `dim`.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CycleTokenMixer(dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """The stem: a 7x7 conv, stride 4, padding 2, with bias and no norm; channels-last out.

    Args:
        in_channels: image channels.
        embed_dim: output channels.
    """

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=7, stride=4, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, floor((H + 1) / 4), floor((W + 1) / 4), C)."""
        return self.proj(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)


class Downsample(nn.Module):
    """The stage transition: a 3x3 conv, stride 2, padding 1, with bias, on a channels-last map.

    Args:
        in_dim: input channels.
        out_dim: output channels.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C_in) -> (B, ceil(H / 2), ceil(W / 2), C_out)."""
        # (B, H, W, C) -> (B, C, H, W) in channels-last memory, which the conv takes as it is, and back
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class CycleStage(nn.Module):
    """(Stages 1-3) the transition conv, then the blocks at one resolution.

    Args:
        blocks: the stage's blocks.
        downsample: the transition from the previous stage, or None for stage 0.
    """

    def __init__(self, blocks: list[CycleBlock], downsample: Downsample | None) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C_prev) -> (B, H', W', C), channels-last."""
        if self.downsample is not None:
            x = self.downsample(x)
        return self.blocks(x)


class CycleMLP(nn.Module):
    """CycleMLP backbone: four stages at strides 4, 8, 16, 32 with widths `config.embed_dims`.

    Output sizes follow the convolutions: the stem gives `floor((H + 1) / 4)` rows (H >= 3; 128 for 512, 8 for 33),
    each transition `ceil(H / 2)` of the previous; likewise for the width.

    Args:
        config: the variant's hyper-parameters.
        in_channels: input image channels.
        drop_path_rate: stochastic-depth rate of the last block; block k of all N gets `rate * k / (N - 1)`. The
            original's dense-prediction backbones ignore their arguments, so they train with 0.
        out_indices: which stages `forward` returns; stages after the last one listed are not run by `forward`.
        num_classes: when an int, also builds the original ImageNet classifier (LayerNorm `norm`, average pool,
            Linear `head`) for `forward_classification`; None builds neither.
    """

    def __init__(
        self,
        config: CycleMLPConfig,
        in_channels: int = 3,
        drop_path_rate: float = 0.0,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        num_stages = len(config.depths)
        if len(config.embed_dims) != num_stages or len(config.mlp_ratios) != num_stages:
            raise ValueError(f"CycleMLPConfig needs one embed_dim and mlp_ratio per stage: depths {config.depths}, "
                             f"embed_dims {config.embed_dims}, mlp_ratios {config.mlp_ratios}")
        if not out_indices or any(i not in range(num_stages) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of 0..{num_stages - 1}, got {out_indices}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes}")
        self.out_indices = tuple(out_indices)
        self.num_classes = num_classes
        dims = config.embed_dims
        self.patch_embed = PatchEmbed(in_channels, dims[0])
        rates = drop_path_rates(drop_path_rate, config.depths)
        stages, infos = [], []
        for i, depth in enumerate(config.depths):
            blocks = [CycleBlock(dims[i], config.mlp_ratios[i], drop_path=rates[i][j]) for j in range(depth)]
            stages.append(CycleStage(blocks, Downsample(dims[i - 1], dims[i]) if i > 0 else None))
            infos.append(FeatureInfo(channels=dims[i], stride=4 * 2**i))
        self.stages = nn.ModuleList(stages)
        # the original's dense-prediction output norms (`norm0/2/4/6` there), for the returned stages only
        self.out_norms = nn.ModuleDict({str(i): nn.LayerNorm(dims[i]) for i in self.out_indices})
        self.feature_info = [infos[i] for i in self.out_indices]
        if num_classes is not None:
            self.norm = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], num_classes)
        # the original initialises Linear and Cycle FC weights (truncated normal, std 0.02; CycleFC does it itself)
        # and LayerNorms; the convs keep PyTorch's default
        self.apply(lambda module: init_weights(module, conv_fan_out=False))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_channels, H, W) -> one (B, C_i, H_i, W_i) map per `out_indices` (sizes in the class docstring),
        each after its output LayerNorm (channels-last memory, NCHW shape)."""
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages[: max(self.out_indices) + 1]):
            x = stage(x)
            if i in self.out_indices:
                outs.append(self.out_norms[str(i)](x).permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W)
        return outs

    def forward_classification(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, num_classes) ImageNet logits: all stages, `norm`, average pool, `head`.
        Requires `num_classes`."""
        if self.num_classes is None:
            raise RuntimeError("forward_classification needs the classifier: build CycleMLP with num_classes=<int>")
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x).mean(dim=(1, 2)))
