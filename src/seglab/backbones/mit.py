"""Mix Transformer (MiT), the SegFormer encoder.

Paper: "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
Xie et al., NeurIPS 2021, arXiv:2105.15203. Original code: NVlabs/SegFormer (NVIDIA Source Code License).

Written for seglab from the paper and the facts of the original code: overlapping patch embeddings
(7x7 stride 4, then 3x3 stride 2), efficient self-attention whose keys/values are spatially reduced by a
strided conv (ratios 8, 4, 2, 1), Mix-FFN (Linear -> 3x3 depth-wise conv -> GELU -> Linear), no positional
encoding. What we changed: attention runs on `F.scaled_dot_product_attention`; module names are seglab's
(see `seglab.convert` for the official, mmseg and Hugging Face layouts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seglab.backbones.base import FeatureInfo
from seglab.layers import DropPath, drop_path_rates, nchw_to_nlc, nlc_to_nchw
from seglab.layers.init import init_weights
from seglab.layers.token_merging import GridMerge, StageMerging, pool_tokens, token_merging_preset, unpool_tokens


class OverlapPatchEmbed(nn.Module):
    """Strided conv with `padding = patch_size // 2`, flattened to tokens, then LayerNorm."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int, norm_eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(nchw_to_nlc(x)), height, width  # (B, N, C)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a sequence reduced by `sr_ratio`**2.

    Args:
        dim: token channels.
        num_heads: attention heads.
        sr_ratio: kernel and stride of the reduction conv; 1 means no reduction.
        qkv_bias: bias on the query and key/value projections.
        sr_norm_eps: eps of the LayerNorm after the reduction conv.
        attn_drop: dropout on attention weights.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        qkv_bias: bool = True,
        sr_norm_eps: float = 1e-5,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=sr_norm_eps)
        # SegFormer++ token merging (`MixVisionTransformer.set_token_merging`); None: the exact attention
        self.merging: StageMerging | None = None

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, num_tokens, dim = x.shape
        head_dim = dim // self.num_heads
        merging = self.merging
        queries, q_merge, q_grid = x, None, None
        if merging is not None and merging.q_ratio:
            q_merge = GridMerge(x, height, width, merging.q_stride, int(num_tokens * merging.q_ratio))
            queries = q_merge.merge(x)
        elif merging is not None and merging.q_pool > 1:
            queries, q_grid = pool_tokens(x, height, width, merging.q_pool)
        q = self.q(queries).reshape(batch, -1, self.num_heads, head_dim).transpose(1, 2)  # (B, h, N, d)
        kv_height, kv_width = height, width
        if self.sr_ratio > 1:
            reduced = self.sr(nlc_to_nchw(x, height, width))
            kv_height, kv_width = reduced.shape[-2:]
            x = self.norm(nchw_to_nlc(reduced))  # (B, N / sr^2, C)
        if merging is not None and merging.kv_ratio:
            x = GridMerge(x, kv_height, kv_width, merging.kv_stride, int(x.shape[1] * merging.kv_ratio)).merge(x)
        kv = self.kv(x).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)  # (2, B, h, M, d)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj(out.transpose(1, 2).reshape(batch, -1, dim))  # (B, h, N, d) -> (B, N, C)
        if q_merge is not None:  # the projection is per token, so it runs on the merged queries
            out = q_merge.unmerge(out)
        elif q_grid is not None:
            out = unpool_tokens(out, q_grid, height, width, merging.q_pool)
        return self.proj_drop(out)


class MixFFN(nn.Module):
    """Linear -> 3x3 depth-wise conv -> GELU -> Linear; the conv supplies the positional cue."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        x = nchw_to_nlc(self.dwconv(nlc_to_nchw(x, height, width)))
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """Pre-norm transformer block: efficient self-attention and Mix-FFN, each with a residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        qkv_bias: bool,
        norm_eps: float,
        sr_norm_eps: float,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias, sr_norm_eps, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class Stage(nn.Module):
    """Patch embedding, blocks, and the stage-end LayerNorm; returns an NCHW map."""

    def __init__(self, patch_embed: OverlapPatchEmbed, blocks: list[Block], dim: int, norm_eps: float) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, height, width = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, height, width)
        return nlc_to_nchw(self.norm(x), height, width)


@dataclass(frozen=True)
class MiTConfig:
    """Hyper-parameters of one MiT variant (official `mit_b*` classes)."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratios: tuple[float, ...] = (4, 4, 4, 4)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)


MIT_CONFIGS: dict[str, MiTConfig] = {
    "b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "b2": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "b3": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "b4": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "b5": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}


class MixVisionTransformer(nn.Module):
    """MiT encoder: four stages at strides 4, 8, 16, 32.

    Args:
        config: the variant's hyper-parameters.
        in_channels: input image channels.
        qkv_bias: bias on query and key/value projections (True in every released model).
        drop_rate: dropout after projections and in the FFN.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: final stochastic-depth rate of the linear schedule.
        norm_eps: eps of the block and stage-end LayerNorms (1e-6 in the original).
        patch_norm_eps: eps of the patch-embedding LayerNorms (plain `nn.LayerNorm`, 1e-5, in the original).
        sr_norm_eps: eps of the LayerNorm after the reduction conv (1e-5 in the original).
        out_indices: which stages to return.
        token_merging: a SegFormer++ preset (`seglab.layers.token_merging.TOKEN_MERGING_PRESETS`: "hq", "fast",
            "n2d") or None for the exact model; no parameters change, so any checkpoint loads either way.
    """

    def __init__(
        self,
        config: MiTConfig,
        in_channels: int = 3,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-6,
        patch_norm_eps: float = 1e-5,
        sr_norm_eps: float = 1e-5,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        token_merging: str | None = None,
    ) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        rates = drop_path_rates(drop_path_rate, config.depths)
        stages, channels, stride = [], in_channels, 1
        infos = []
        for i, dim in enumerate(config.embed_dims):
            patch_embed = OverlapPatchEmbed(channels, dim, config.patch_sizes[i], config.strides[i], patch_norm_eps)
            blocks = [
                Block(dim, config.num_heads[i], config.mlp_ratios[i], config.sr_ratios[i], qkv_bias, norm_eps,
                      sr_norm_eps, drop_rate, attn_drop_rate, rates[i][j])
                for j in range(config.depths[i])
            ]
            stages.append(Stage(patch_embed, blocks, dim, norm_eps))
            channels, stride = dim, stride * config.strides[i]
            infos.append(FeatureInfo(channels=dim, stride=stride))
        self.stages = nn.ModuleList(stages)
        self.feature_info = [infos[i] for i in self.out_indices]
        # the stage-1 map must be at least as large as its reduction conv's kernel (sr_ratio)
        first = config.sr_ratios[0]
        self.min_input_size = (first - 1) * config.strides[0] + config.patch_sizes[0] - 2 * (config.patch_sizes[0] // 2)
        self.apply(init_weights)
        self.set_token_merging(token_merging)

    def set_token_merging(self, preset: str | None) -> None:
        """Switches SegFormer++ token merging on (a preset name) or off (None) in every block's attention."""
        settings = token_merging_preset(preset)
        self.token_merging = preset
        for i, stage in enumerate(self.stages):
            for block in stage.blocks:
                block.attn.merging = None if settings is None else settings[i]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-2] < self.min_input_size or x.shape[-1] < self.min_input_size:
            raise ValueError(f"MiT needs inputs of at least {self.min_input_size}x{self.min_input_size} pixels "
                             f"(its first stage reduces keys by {self.stages[0].blocks[0].attn.sr_ratio}), got "
                             f"{x.shape[-2]}x{x.shape[-1]}; use a larger image, crop or scale")
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs

