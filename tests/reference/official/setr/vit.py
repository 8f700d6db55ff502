"""The ViT encoder of the original SETR code, written from the official file.

Follows fudan-zvg/SETR @ 1361561ffde90e07ed1b4f9cdbc10b88ce27e2f3 : `mmseg/models/backbones/vit.py` (classes
`Attention`, `Block`, `PatchEmbed`, `VisionTransformer`; its `Mlp` and `DropPath` are timm 0.3's, copied into the file,
and imported here from `official.timm_lite`). Same module names (timm's: `patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`) and forward; the hybrid CNN embedding,
pretrained loading and weight initialisation are left out (eval only). Quirks kept: the input must be exactly
`img_size` (asserted; the position embedding is added without resampling); the class token stays through every block;
`forward` returns the outputs of *all* blocks, class token included (the heads pick theirs with `in_index`); no final
norm; LayerNorm eps 1e-6 (`partial(nn.LayerNorm, eps=1e-6)`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from official.timm_lite import DropPath, Mlp


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        b, n, c = x.shape
        # (B, N, 3C) -> (3, B, heads, N, C / heads)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                              proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv patch embedding that accepts exactly `img_size` (the original asserts it)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (self.img_size[0] // patch_size) * (self.img_size[1] // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        _, _, h, w = x.shape
        assert (h, w) == self.img_size, f"Input image size ({h}*{w}) doesn't match model ({self.img_size})."
        return self.proj(x)


class VisionTransformer(nn.Module):
    """The encoder of SETR-Naive / PUP: returns the (B, 1 + N, C) output of every block, class token first."""

    def __init__(self, model_name="vit_large_patch16_384", img_size=384, patch_size=16, in_chans=3, embed_dim=1024,
                 depth=24, num_heads=16, num_classes=19, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.1,
                 attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=partial(nn.LayerNorm, eps=1e-6),  # noqa: B008
                 norm_cfg=None, pos_embed_interp=False, random_init=False, align_corners=False):
        super().__init__()
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.out_indices = tuple(range(depth))
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                  drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer)
            for i in range(depth)])

    def embed(self, x):
        """Patch tokens with the class token prepended and the position embedding added: (B, 1 + N, C)."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, N, C)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x + self.pos_embed

    def forward_blocks(self, x):
        """The outputs of the blocks in `out_indices` (all of them), from the embedded tokens after `pos_drop`."""
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.out_indices:
                outs.append(x)
        return outs

    def forward(self, x):
        return tuple(self.forward_blocks(self.pos_drop(self.embed(x))))
