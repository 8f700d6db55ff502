"""Segmenter's decoders: the mask transformer and the linear (point-wise) decoder.

Paper: "Segmenter: Transformer for Semantic Segmentation", Strudel et al., ICCV 2021, arXiv:2105.05633. Original code:
rstrudel/segmenter (MIT; `segm/model/decoder.py`: `MaskTransformer`, `DecoderLinear`); the mmsegmentation port is
`SegmenterMaskTransformerHead` (Apache-2.0), whose module names ours follow (`dec_proj`, `cls_emb`, `layers`,
`decoder_norm`, `patch_proj`, `classes_proj`, `mask_norm`).

Mask transformer: the patch tokens of the encoder's last block are projected (`dec_proj`), K learned class embeddings
are appended, the joint sequence runs through pre-norm transformer blocks (the ViT block: LayerNorm, multi-head
self-attention, LayerNorm, GELU MLP), and after a final LayerNorm the patch and class tokens are projected without
bias, L2-normalised and multiplied: masks = patches @ classes^T, one score per (patch, class), normalised over the
classes with a LayerNorm (`mask_norm`). The logits are at the patch stride (16).

Linear decoder: one linear map per patch token, written as a 1x1 convolution on the NCHW map (the official code
applies `nn.Linear` to the tokens; mmseg uses `FCNHead` with `num_convs=0`, `dropout_ratio=0`, i.e. a 1x1 `conv_seg`).

What we changed: the official code stores `proj_patch` / `proj_classes` as (C, C) matrices applied as `x @ P`; ours
are bias-free `nn.Linear`s as in mmseg (weight = P^T, mapped by `seglab.convert.segmenter`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import drop_path_rates
from seglab.layers.init import init_weights
from seglab.layers.transformer import Block


class MaskTransformerHead(nn.Module):
    """Segmenter's mask transformer on one backbone output.

    Args:
        in_channels: channels of the backbone output (the encoder width).
        num_classes: output classes (K), also the number of class embeddings.
        embed_dim: width of the decoder tokens (the encoder width in every published model).
        num_heads: attention heads of the decoder blocks (the encoder's).
        num_layers: decoder blocks.
        mlp_ratio: MLP hidden width relative to `embed_dim`.
        drop_path_rate: final stochastic-depth rate of the linear schedule 0..rate over the decoder blocks.
        dropout: dropout after the attention projection and in the MLP (0 in mmseg, 0.1 in the official code).
        attn_drop: dropout on attention weights.
        norm_eps: eps of every LayerNorm of the head (PyTorch's default 1e-5 in both the official code and mmseg).
        in_index: which backbone output to read.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        embed_dim: int,
        num_heads: int,
        num_layers: int = 2,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        norm_eps: float = 1e-5,
        in_index: int = -1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_index = in_index
        self.dec_proj = nn.Linear(in_channels, embed_dim)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, embed_dim))
        rates = drop_path_rates(drop_path_rate, [num_layers])[0]
        self.layers = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop=dropout, attn_drop=attn_drop,
                  drop_path=rates[i], norm_eps=norm_eps)
            for i in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.patch_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.classes_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.mask_norm = nn.LayerNorm(num_classes, eps=norm_eps)
        self.apply(init_weights)  # truncated normal linears (std 0.02), unit LayerNorms: mmseg's and the official init
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """One (B, C, h, w) map of `features` -> (B, num_classes, h, w) mask logits."""
        x = features[self.in_index]
        batch, _, height, width = x.shape
        x = self.dec_proj(x.flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, h*w, D)
        x = torch.cat([x, self.cls_emb.expand(batch, -1, -1).to(x.dtype)], dim=1)  # (B, h*w + K, D)
        for layer in self.layers:
            x = layer(x)
        x = self.decoder_norm(x)
        patches, classes = x[:, : -self.num_classes], x[:, -self.num_classes :]
        # NOTE: F.normalize clamps the norm at 1e-12 where the original divides by it directly; equal otherwise
        patches = F.normalize(self.patch_proj(patches), dim=-1)
        classes = F.normalize(self.classes_proj(classes), dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, h*w, K)
        return masks.transpose(1, 2).reshape(batch, self.num_classes, height, width)  # (B, K, h*w) -> (B, K, h, w)


class LinearHead(nn.Module):
    """Segmenter's linear decoder: a per-token linear classifier (a 1x1 conv with bias) on one backbone output.

    Args:
        in_channels: channels of the backbone output.
        num_classes: output classes.
        in_index: which backbone output to read.
    """

    def __init__(self, in_channels: int, num_classes: int, in_index: int = -1) -> None:
        super().__init__()
        self.in_index = in_index
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        nn.init.trunc_normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """One (B, C, h, w) map of `features` -> (B, num_classes, h, w) logits."""
        return self.classifier(features[self.in_index])

