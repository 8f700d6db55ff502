"""The Mix Transformer encoder of NVlabs/SegFormer, written from the official code.

Follows NVlabs/SegFormer @ 65fa8cfa9b52b6ee7e8897a98705abf8570f9e32 : `mmseg/models/backbones/mix_transformer.py`
(classes `Mlp`, `Attention`, `Block`, `OverlapPatchEmbed`, `MixVisionTransformer`, `DWConv`, `mit_b0` .. `mit_b5`).
Same module names and forward; weight initialisation, `init_weights`, drop-path schedule and the mmseg registry are
left out (eval only). Quirks kept: the blocks and stage norms use `LayerNorm(eps=1e-6)` (the `mit_b*` classes pass
`partial(nn.LayerNorm, eps=1e-6)`), but `OverlapPatchEmbed.norm` and `Attention.norm` are plain `nn.LayerNorm`
(eps 1e-5); the MLP's depth-wise conv sits in a `DWConv` wrapper (`mlp.dwconv.dwconv`); no classifier head.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from official.timm_lite import DropPath  # timm 0.3.2's (the README's pin), imported by the original


class DWConv(nn.Module):
    def __init__(self, dim=768):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, H, W):
        B, _, C = x.shape
        x = self.dwconv(x.transpose(1, 2).view(B, C, H, W))  # tokens -> NCHW
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x, H, W):
        x = self.act(self.dwconv(self.fc1(x), H, W))
        x = self.fc2(self.drop(x))
        return self.drop(x)


class Attention(nn.Module):
    """Efficient self-attention: keys and values from the map shrunk by a strided `sr` conv and a LayerNorm."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0, sr_ratio=1):
        super().__init__()
        assert dim % num_heads == 0
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # NOTE: default eps 1e-5, not the blocks' 1e-6

    def forward(self, x, H, W):
        B, N, C = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(B, N, heads, C // heads).permute(0, 2, 1, 3)  # (B, heads, N, d)
        if self.sr_ratio > 1:
            x_ = self.sr(x.permute(0, 2, 1).reshape(B, C, H, W)).reshape(B, C, -1).permute(0, 2, 1)
            x_ = self.norm(x_)
        else:
            x_ = x
        kv = self.kv(x_).reshape(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4)  # (2, B, heads, M, d)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm, sr_ratio=1):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                              proj_drop=drop, sr_ratio=sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x, H, W):
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch_size=7, stride=4, in_chans=3, embed_dim=768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride,
                              padding=(patch_size // 2, patch_size // 2))
        self.norm = nn.LayerNorm(embed_dim)  # NOTE: default eps 1e-5

    def forward(self, x):
        x = self.proj(x)
        _, _, H, W = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), H, W  # (B, C, H, W) -> (B, N, C)


class MixVisionTransformer(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dims=(64, 128, 256, 512),
                 num_heads=(1, 2, 4, 8), mlp_ratios=(4, 4, 4, 4), qkv_bias=False, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=nn.LayerNorm, depths=(3, 4, 6, 3),
                 sr_ratios=(8, 4, 2, 1)):
        super().__init__()
        self.depths = depths
        # stage 1: 7x7 stride 4; stages 2-4: 3x3 stride 2 (`img_size` only sets unused attributes in the original)
        self.patch_embed1 = OverlapPatchEmbed(patch_size=7, stride=4, in_chans=in_chans, embed_dim=embed_dims[0])
        self.patch_embed2 = OverlapPatchEmbed(patch_size=3, stride=2, in_chans=embed_dims[0], embed_dim=embed_dims[1])
        self.patch_embed3 = OverlapPatchEmbed(patch_size=3, stride=2, in_chans=embed_dims[1], embed_dim=embed_dims[2])
        self.patch_embed4 = OverlapPatchEmbed(patch_size=3, stride=2, in_chans=embed_dims[2], embed_dim=embed_dims[3])
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        cur = 0
        for i in range(4):
            setattr(self, f"block{i + 1}", nn.ModuleList([Block(
                dim=embed_dims[i], num_heads=num_heads[i], mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias,
                qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[cur + j],
                norm_layer=norm_layer, sr_ratio=sr_ratios[i]) for j in range(depths[i])]))
            setattr(self, f"norm{i + 1}", norm_layer(embed_dims[i]))
            cur += depths[i]

    def forward_features(self, x):
        B = x.shape[0]
        outs = []
        for i in range(4):
            x, H, W = getattr(self, f"patch_embed{i + 1}")(x)
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, H, W)
            x = getattr(self, f"norm{i + 1}")(x)
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()  # (B, N, C) -> (B, C, H, W)
            outs.append(x)
        return outs

    def forward(self, x):
        return self.forward_features(x)


# `mit_b0` .. `mit_b5`: patch_size=4, num_heads (1, 2, 5, 8), mlp_ratios 4, qkv_bias, LayerNorm eps 1e-6,
# sr_ratios (8, 4, 2, 1), drop_rate 0, drop_path_rate 0.1
MIT_SETTINGS = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}


def mit(variant: str) -> MixVisionTransformer:
    """The official `mit_b*` backbone class (its constructor ignores every keyword the config passes)."""
    embed_dims, depths = MIT_SETTINGS[variant]
    return MixVisionTransformer(
        patch_size=4, embed_dims=embed_dims, num_heads=(1, 2, 5, 8), mlp_ratios=(4, 4, 4, 4), qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), depths=depths, sr_ratios=(8, 4, 2, 1), drop_rate=0.0,
        drop_path_rate=0.1)
