"""The decoders of the official Segmenter code, written from the official file.

Follows rstrudel/segmenter @ 20d1bfad354165ee45c3f65972a4d9c131f58d53 : `segm/model/decoder.py` (`DecoderLinear`,
`MaskTransformer`) and `segm/model/factory.py` (`create_decoder`: the mask transformer has the encoder's width,
`n_heads = d_model // 64`, `d_ff = 4 * d_model`). Same module names (`head`; `cls_emb`, `proj_dec`, `blocks.{i}`,
`proj_patch`, `proj_classes` (raw (C, C) parameters applied as `x @ P`), `decoder_norm`, `mask_norm`) and forward.
Quirks kept: the class embeddings are appended after the patch tokens; patch and class features are L2-normalised
(plain division by the norm, no eps) before their dot product; `mask_norm` is a LayerNorm over the classes; the token
sequence is folded back with `h = H // patch` (the padded height).
"""

from __future__ import annotations

import torch
from torch import nn

from official.segmenter.blocks import Block


class DecoderLinear(nn.Module):
    def __init__(self, n_cls, patch_size, d_encoder):
        super().__init__()
        self.d_encoder = d_encoder
        self.patch_size = patch_size
        self.n_cls = n_cls
        self.head = nn.Linear(d_encoder, n_cls)

    def forward(self, x, im_size):
        gs = im_size[0] // self.patch_size
        x = self.head(x)
        b, n, c = x.shape
        return x.transpose(1, 2).reshape(b, c, gs, n // gs)  # "b (h w) c -> b c h w"


class MaskTransformer(nn.Module):
    def __init__(self, n_cls, patch_size, d_encoder, n_layers, n_heads, d_model, d_ff, drop_path_rate, dropout):
        super().__init__()
        self.patch_size = patch_size
        self.n_cls = n_cls
        self.scale = d_model**-0.5
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, n_layers)]
        self.blocks = nn.ModuleList([Block(d_model, n_heads, d_ff, dropout, dpr[i]) for i in range(n_layers)])
        self.cls_emb = nn.Parameter(torch.randn(1, n_cls, d_model))
        self.proj_dec = nn.Linear(d_encoder, d_model)
        self.proj_patch = nn.Parameter(self.scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(self.scale * torch.randn(d_model, d_model))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.mask_norm = nn.LayerNorm(n_cls)

    def forward(self, x, im_size):
        gs = im_size[0] // self.patch_size
        x = self.proj_dec(x)
        x = torch.cat((x, self.cls_emb.expand(x.size(0), -1, -1)), 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        patches, cls_seg_feat = x[:, : -self.n_cls], x[:, -self.n_cls :]
        patches = patches @ self.proj_patch
        cls_seg_feat = cls_seg_feat @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        cls_seg_feat = cls_seg_feat / cls_seg_feat.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(patches @ cls_seg_feat.transpose(1, 2))  # (B, N, n_cls)
        b, n, c = masks.shape
        return masks.transpose(1, 2).reshape(b, c, gs, n // gs)  # "b (h w) n -> b n h w"
