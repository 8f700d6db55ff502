"""Vision Transformer (ViT), the plain single-scale backbone of SETR, SegViT and Segmenter.

Paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", Dosovitskiy et al., ICLR 2021,
arXiv:2010.11929. Original code: google-research/vision_transformer (Apache-2.0); the segmentation ports are
open-mmlab/mmsegmentation `VisionTransformer` (SETR, SegViT) and rstrudel/segmenter (timm's ViT).

Written for seglab from the paper and the facts of those codes: a 16x16 stride-16 patch embedding on the image
zero-padded right/bottom to a multiple of the patch (mmseg's "corner" adaptive padding), a class token, a learned
absolute position embedding for the training grid that is resampled (cls slot kept, the patch part interpolated with
`align_corners=False`) when the input gives another grid, dropout after adding it, pre-norm blocks (LayerNorm,
multi-head self-attention, LayerNorm, GELU MLP) with stochastic depth, and the outputs of chosen blocks returned as
NCHW maps without the class token. `with_cls_token=False` follows mmseg: the class token receives its position
embedding and is then dropped before the first block, so the encoder runs on patch tokens only. `final_norm` applies
the final LayerNorm to the last block's output only (mmseg).

SegViT's Shrunk structure (query-based downsampling, "QD", zbwxp/SegVit `vit_shrink`): at block `shrink_index` the
queries are the top-left token of every 2x2 cell of the grid and the keys/values are all tokens, with the block's own
weights: `y = down + attn(norm1(down), norm1(x))`, `y + mlp(norm2(y))`; the later blocks run at stride 32.

What we changed: attention runs on `F.scaled_dot_product_attention` (the fused qkv projection split by rows where
queries and keys/values come from different token sets); module names are seglab's (`seglab.convert.vit` maps the
timm / official Segmenter and SETR, mmseg and JAX `.npz` layouts). The position embedding is resampled whenever the
token grid differs from the trained one (mmseg compares only token counts, so a transposed grid of the same count
would skip its resize there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seglab.backbones.base import FeatureInfo
from seglab.layers import drop_path_rates
from seglab.layers.init import init_weights
from seglab.layers.transformer import Attention, Block  # noqa: F401  (the encoder's blocks)

INTERPOLATE_MODES = ("bicubic", "bilinear")


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of one ViT variant.

    Args:
        embed_dim: token channels (C).
        depth: number of blocks.
        num_heads: attention heads; C must be divisible by it.
        mlp_ratio: hidden width of the MLP relative to C.
        patch_size: side of the square patches (stride of the features).
    """

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16


VIT_CONFIGS: dict[str, ViTConfig] = {
    "t": ViTConfig(192, 12, 3),
    "s": ViTConfig(384, 12, 6),
    "b": ViTConfig(768, 12, 12),
    "l": ViTConfig(1024, 24, 16),
}


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    trained_grid: tuple[int, int],
    grid: tuple[int, int],
    mode: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """The position embedding of a `trained_grid` resampled to `grid`, the cls slot kept as it is.

    Args:
        pos_embed: (1, 1 + gh * gw, C) with gh, gw = trained_grid, the cls slot first.
        trained_grid: (gh, gw), the grid the embedding was trained for.
        grid: (h, w), the token grid of the current input.
        mode: "bicubic" or "bilinear" interpolation, `align_corners=False`.
        antialias: `F.interpolate`'s antialiased kernels (timm's default). They differ from the plain ones even when
            upsampling: antialiased bicubic uses the cubic coefficient a = -0.5, plain bicubic a = -0.75.

    Returns:
        (1, 1 + h * w, C), in the dtype of `pos_embed`.
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    channels = pos_embed.shape[-1]
    patch_pos = patch_pos.reshape(1, trained_grid[0], trained_grid[1], channels).permute(0, 3, 1, 2)  # (1, C, gh, gw)
    # interpolate in float32: bicubic weights in half precision lose visibly on the small embedding values
    patch_pos = F.interpolate(patch_pos.float(), size=grid, mode=mode, align_corners=False, antialias=antialias)
    patch_pos = patch_pos.to(pos_embed.dtype)
    patch_pos = patch_pos.flatten(2).transpose(1, 2)  # (1, C, h, w) -> (1, h*w, C)
    return torch.cat([cls_pos, patch_pos], dim=1)


class PatchEmbed(nn.Module):
    """Conv patch x patch, stride patch, on the image zero-padded right/bottom to a multiple of the patch; NCHW out.
    `bias=False`: the conv has no bias (mmseg 1.x's `VisionTransformer` default)."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ceil-division form: exported size expressions stay small (no modulo, no negative floor division)
        size = self.patch_size
        pad_h = (x.shape[-2] + size - 1) // size * size - x.shape[-2]
        pad_w = (x.shape[-1] + size - 1) // size * size - x.shape[-1]
        if torch.compiler.is_exporting() or pad_h or pad_w:  # no branch on symbolic sizes
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.proj(x)


class VisionTransformer(nn.Module):
    """Plain ViT backbone: one token grid at stride `patch_size` (32 after a shrink block), outputs of chosen blocks.

    Args:
        config: the variant's hyper-parameters.
        in_channels: input image channels.
        img_size: the image size the position embedding was trained for; its grid is `img_size // patch_size`.
        out_indices: 0-based indices of the blocks whose outputs are returned, increasing; blocks after the last one
            listed are not run.
        with_cls_token: keep the class token through the blocks; False drops it (after its position embedding)
            before block 0, as mmseg does. The `cls_token` parameter exists either way (every source has it).
        final_norm: apply the LayerNorm `norm` to the output of the last block (only to that one), as mmseg does;
            without it the backbone has no `norm`.
        interpolate_mode: how the position embedding is resampled to another grid: "bicubic" (timm, SegViT) or
            "bilinear" (SETR, the official Segmenter), `align_corners=False`.
        drop_path_rate: final stochastic-depth rate of the linear schedule 0..rate over the blocks.
        drop_rate: dropout after adding the position embedding, after the attention projection and in the MLP.
        attn_drop_rate: dropout on attention weights.
        qkv_bias: bias on the query/key/value projections.
        norm_eps: eps of every LayerNorm (1e-6 in timm and the mmseg configs; 1e-5 in the official Segmenter).
        shrink_index: SegViT Shrunk: the block that performs query-based downsampling to stride 2 * patch_size;
            requires `with_cls_token=False`. None: no shrink.
        interpolate_antialias: resample the position embedding with antialiased kernels, as timm's
            `dynamic_img_size` models do; False is the plain `F.interpolate` of mmseg (SETR, SegViT) and of the
            official Segmenter (bilinear). The two differ at every resampled size (`resample_pos_embed`).
        patch_bias: a bias on the patch-embedding conv (timm, the official codes, mmseg 0.x); mmseg 1.x builds its
            `VisionTransformer` without one by default (`patch_bias=False`), so its checkpoints have none.
    """

    def __init__(
        self,
        config: ViTConfig,
        in_channels: int = 3,
        img_size: int | tuple[int, int] = 224,
        out_indices: tuple[int, ...] = (11,),
        with_cls_token: bool = True,
        final_norm: bool = False,
        interpolate_mode: str = "bicubic",
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        shrink_index: int | None = None,
        interpolate_antialias: bool = False,
        patch_bias: bool = True,
    ) -> None:
        super().__init__()
        depth, dim, patch = config.depth, config.embed_dim, config.patch_size
        out_indices = tuple(out_indices)
        if not out_indices or any(i not in range(depth) for i in out_indices) or list(out_indices) != sorted(
            set(out_indices)
        ):
            raise ValueError(f"out_indices must be increasing block indices in 0..{depth - 1}, got {out_indices}")
        if interpolate_mode not in INTERPOLATE_MODES:
            raise ValueError(f"interpolate_mode must be one of {INTERPOLATE_MODES}, got {interpolate_mode!r}")
        if shrink_index is not None:
            if shrink_index not in range(depth):
                raise ValueError(f"shrink_index must be a block index in 0..{depth - 1}, got {shrink_index}")
            if with_cls_token:
                raise ValueError("shrink_index (SegViT query-based downsampling) works on the patch grid only; "
                                 "build the backbone with with_cls_token=False")
        img_h, img_w = _pair(img_size)
        if img_h < patch or img_w < patch:
            raise ValueError(f"img_size {(img_h, img_w)} is smaller than the patch size {patch}")
        self.config = config
        self.out_indices = out_indices
        self.with_cls_token = with_cls_token
        self.interpolate_mode = interpolate_mode
        self.interpolate_antialias = interpolate_antialias
        self.shrink_index = shrink_index
        self.patch_size = patch
        self.grid_size = (img_h // patch, img_w // patch)  # the grid the position embedding was trained for

        self.patch_embed = PatchEmbed(in_channels, dim, patch, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i], norm_eps)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if final_norm else None
        self.feature_info = [
            FeatureInfo(channels=dim, stride=patch * (2 if shrink_index is not None and i >= shrink_index else 1))
            for i in out_indices
        ]
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The (1, 1 + h * w, C) position embedding for an (h, w) token grid, resampled when it is not the trained
        one (always while exporting, where sizes are symbolic; resampling to the same grid is the identity)."""
        if torch.compiler.is_exporting() or tuple(grid) != self.grid_size:
            return resample_pos_embed(self.pos_embed, self.grid_size, grid, self.interpolate_mode,
                                      self.interpolate_antialias)
        return self.pos_embed

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_channels, H, W) -> one (B, embed_dim, h, w) map per `out_indices`, cls token removed, with
        h = ceil(H / patch), w = ceil(W / patch), halved (ceil) from the shrink block on."""
        x = self.patch_embed(x)  # (B, C, h, w)
        batch, _, height, width = x.shape
        grid = (height, width)
        x = x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        x = torch.cat([self.cls_token.expand(batch, -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + h*w, C)
        x = self.pos_drop(x + self.position_embedding(grid))
        if not self.with_cls_token:
            x = x[:, 1:]  # mmseg: the cls token gets its position embedding, then leaves before block 0
        prefix = 1 if self.with_cls_token else 0
        last = len(self.blocks) - 1
        outs = []
        for i, block in enumerate(self.blocks[: self.out_indices[-1] + 1]):
            if i == self.shrink_index:
                x, grid = block.forward_shrink(x, grid)
            else:
                x = block(x)
            if i == last and self.norm is not None:
                x = self.norm(x)
            if i in self.out_indices:
                tokens = x[:, prefix:]  # (B, h*w, C)
                outs.append(tokens.transpose(1, 2).reshape(batch, tokens.shape[-1], grid[0], grid[1]))  # (B, C, h, w)
        return outs


def _init_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02) linears with zero biases and unit LayerNorms; the patch conv gets mmseg's
    Kaiming-normal (fan-in) init with a zero bias."""
    init_weights(module, conv_fan_out=False)
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
