"""The ViT-MLA encoder of the original SETR code (the MLA neck lives inside the backbone), written from the official
file.

Follows fudan-zvg/SETR @ 1361561ffde90e07ed1b4f9cdbc10b88ce27e2f3 : `mmseg/models/backbones/vit_mla.py` (classes
`Conv_MLA`, `VIT_MLA`; its `Mlp` / `Attention` / `Block` / `PatchEmbed` copies are identical to `vit.py`'s, and
`VIT_MLA` repeats `vit.py`'s `VisionTransformer` constructor and block loop, adding the MLA neck: here it subclasses
`official.setr.vit.VisionTransformer`). Same module names (`norm_0..3`, `mla.mla_p{2..5}_1x1`, `mla.mla_p{2..5}` as
`Sequential(conv, BN, ReLU)`) and forward.
Quirks kept: the class token receives its position embedding and is then dropped before the first block, so the
encoder runs on patch tokens only; `mla_index` picks four block outputs, each gets its own LayerNorm (eps 1e-6) and a
square reshape (`h = w = sqrt(N)`); the 1x1 projections are summed top-down *before* the 3x3 convs
(`p4 = p5 + p4`, ...), except that `mla_p5` reads `mla_p5_1x1` directly; the convs have no bias; outputs are returned
shallow to deep (p2, p3, p4, p5). SyncBN is `nn.BatchNorm2d` (eval only).
"""

from __future__ import annotations

import math
from functools import partial

from torch import nn

from official.mmcv_lite import build_norm_layer
from official.setr.vit import VisionTransformer


def _conv_bn_relu(in_channels, out_channels, kernel_size, norm_cfg):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         build_norm_layer(norm_cfg, out_channels)[1], nn.ReLU())


class Conv_MLA(nn.Module):
    def __init__(self, in_channels=1024, mla_channels=256, norm_cfg=None):
        super().__init__()
        for level in (2, 3, 4, 5):
            setattr(self, f"mla_p{level}_1x1", _conv_bn_relu(in_channels, mla_channels, 1, norm_cfg))
        for level in (2, 3, 4, 5):
            setattr(self, f"mla_p{level}", _conv_bn_relu(mla_channels, mla_channels, 3, norm_cfg))

    @staticmethod
    def to_2D(x):
        n, hw, c = x.shape
        h = w = int(math.sqrt(hw))
        return x.transpose(1, 2).reshape(n, c, h, w)  # (B, N, C) -> (B, C, h, w), square

    def forward(self, res2, res3, res4, res5):
        res2, res3, res4, res5 = (self.to_2D(r) for r in (res2, res3, res4, res5))
        p5_1x1 = self.mla_p5_1x1(res5)
        p4_1x1 = self.mla_p4_1x1(res4)
        p3_1x1 = self.mla_p3_1x1(res3)
        p2_1x1 = self.mla_p2_1x1(res2)
        p4_plus = p5_1x1 + p4_1x1
        p3_plus = p4_plus + p3_1x1
        p2_plus = p3_plus + p2_1x1
        return self.mla_p2(p2_plus), self.mla_p3(p3_plus), self.mla_p4(p4_plus), self.mla_p5(p5_1x1)


class VIT_MLA(VisionTransformer):
    """`vit.py`'s `VisionTransformer` (the official class repeats its constructor and block loop) with the MLA neck."""

    def __init__(self, model_name="vit_large_patch16_384", img_size=384, patch_size=16, in_chans=3, embed_dim=1024,
                 depth=24, num_heads=16, num_classes=19, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.1,
                 attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=partial(nn.LayerNorm, eps=1e-6),  # noqa: B008
                 norm_cfg=None, pos_embed_interp=False, random_init=False, align_corners=False, mla_channels=256,
                 mla_index=(5, 11, 17, 23)):
        super().__init__(model_name, img_size, patch_size, in_chans, embed_dim, depth, num_heads, num_classes,
                         mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, norm_layer,
                         norm_cfg, pos_embed_interp, random_init, align_corners)
        self.mla_index = mla_index
        self.mla = Conv_MLA(in_channels=embed_dim, mla_channels=mla_channels, norm_cfg=norm_cfg)
        self.norm_0 = norm_layer(embed_dim)
        self.norm_1 = norm_layer(embed_dim)
        self.norm_2 = norm_layer(embed_dim)
        self.norm_3 = norm_layer(embed_dim)

    def forward(self, x):
        x = self.embed(x)[:, 1:]  # NOTE: the class token leaves right after its position embedding
        outs = self.forward_blocks(self.pos_drop(x))
        c6 = self.norm_0(outs[self.mla_index[0]])
        c12 = self.norm_1(outs[self.mla_index[1]])
        c18 = self.norm_2(outs[self.mla_index[2]])
        c24 = self.norm_3(outs[self.mla_index[3]])
        return self.mla(c6, c12, c18, c24)
