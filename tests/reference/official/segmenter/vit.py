"""The ViT encoder of the official Segmenter code, written from the official file.

Follows rstrudel/segmenter @ 20d1bfad354165ee45c3f65972a4d9c131f58d53 : `segm/model/vit.py` (`PatchEmbedding`,
`VisionTransformer`) and `segm/model/factory.py` (`create_vit`: `n_cls=1000`, `d_ff = 4 * d_model`). Same module names
(`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}`, `norm`, and the ImageNet classifier `head` that the
segmentation forward never calls but the checkpoints hold) and forward for `return_features=True`. Distillation
tokens are left out (no DeiT encoder here). Quirks kept: the position embedding is resampled (bilinear,
`utils.resize_pos_embed`) whenever the token count differs from the trained grid's; the final LayerNorm (eps 1e-5)
applies to every token.
"""

from __future__ import annotations

import torch
from torch import nn

from official.segmenter.blocks import Block
from official.segmenter.utils import resize_pos_embed


class PatchEmbedding(nn.Module):
    def __init__(self, image_size, patch_size, embed_dim, channels):
        super().__init__()
        self.image_size = image_size
        if image_size[0] % patch_size != 0 or image_size[1] % patch_size != 0:
            raise ValueError("image dimensions must be divisible by the patch size")
        self.grid_size = image_size[0] // patch_size, image_size[1] // patch_size
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.patch_size = patch_size
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, im):
        return self.proj(im).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, N, C)


class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch_size, n_layers, d_model, d_ff, n_heads, n_cls, dropout=0.1,
                 drop_path_rate=0.0, distilled=False, channels=3):
        super().__init__()
        assert not distilled, "the distilled (DeiT) encoder is not reproduced"
        self.patch_embed = PatchEmbedding(image_size, patch_size, d_model, channels)
        self.patch_size = patch_size
        self.n_layers = n_layers
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)
        self.distilled = distilled
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, d_model))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, n_layers)]
        self.blocks = nn.ModuleList([Block(d_model, n_heads, d_ff, dropout, dpr[i]) for i in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_cls)

    def forward(self, im, return_features=False):
        _, _, h, w = im.shape
        ps = self.patch_size
        x = self.patch_embed(im)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        pos_embed = self.pos_embed
        if x.shape[1] != pos_embed.shape[1]:
            pos_embed = resize_pos_embed(pos_embed, self.patch_embed.grid_size, (h // ps, w // ps), 1)
        x = self.dropout(x + pos_embed)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        if return_features:
            return x
        return self.head(x[:, 0])
