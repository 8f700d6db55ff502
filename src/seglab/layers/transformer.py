"""The pre-norm transformer block of ViT (`Attention` with fused qkv, `Block`) and its SegViT query-downsampling
form; shared by the ViT encoder (`backbones/vit.py`) and Segmenter's mask transformer (`heads/segmenter.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers.drop import DropPath
from seglab.layers.mlp import Mlp


class Attention(nn.Module):
    """Multi-head attention with a fused query/key/value projection; queries and keys/values may differ.

    Args:
        dim: token channels.
        num_heads: attention heads.
        qkv_bias: bias on the query/key/value projection.
        attn_drop: dropout on attention weights.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, channels = x.shape
        return x.view(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)  # (B, heads, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: (B, N, C) normalised query tokens.
            context: (B, M, C) normalised key/value tokens; None for self-attention (keys/values from `x`).

        Returns:
            (B, N, C).
        """
        batch, length, dim = x.shape
        if context is None:
            qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, N, d)
        else:
            # the fused weight is [W_q; W_k; W_v] by rows: project the queries and the keys/values separately
            w_q, w_kv = self.qkv.weight.split([dim, 2 * dim])
            b_q, b_kv = self.qkv.bias.split([dim, 2 * dim]) if self.qkv.bias is not None else (None, None)
            q = self._heads(F.linear(x, w_q, b_q))
            kv = F.linear(context, w_kv, b_kv).view(batch, context.shape[1], 2, self.num_heads, dim // self.num_heads)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, heads, M, d)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, length, dim)  # (B, heads, N, d) -> (B, N, C)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: attention and MLP, each with a residual and stochastic depth.

    Args:
        dim: token channels.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width relative to `dim`.
        qkv_bias: bias on the query/key/value projection.
        drop: dropout after the projections and in the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth rate of both residual branches.
        norm_eps: eps of both LayerNorms.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
        norm_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_shrink(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """SegViT's query-based downsampling with this block's weights.

        The queries are the top-left tokens of every 2x2 cell (`[::2, ::2]`, ceil(h / 2) x ceil(w / 2) of them), the
        keys/values all tokens; the residual adds the attention to the downsampled tokens.

        Args:
            x: (B, h*w, C) patch tokens (no cls token), row-major.
            grid: (h, w).

        Returns:
            (B, h2*w2, C) and (h2, w2).
        """
        batch, _, channels = x.shape
        down = x.view(batch, grid[0], grid[1], channels)[:, ::2, ::2]  # (B, h2, w2, C)
        new_grid = (down.shape[1], down.shape[2])
        down = down.reshape(batch, -1, channels)  # (B, h2*w2, C)
        # LayerNorm is per token: norm1 of the subsample equals the subsample of norm1(x)
        y = down + self.drop_path(self.attn(self.norm1(down), self.norm1(x)))
        return y + self.drop_path(self.mlp(self.norm2(y))), new_grid
