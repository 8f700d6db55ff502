"""MaskFormer head: an FPN pixel decoder and a DETR transformer decoder predicting (class, mask) pairs.

Paper: "Per-Pixel Classification is Not All You Need for Semantic Segmentation", Cheng et al., NeurIPS 2021,
arXiv:2107.06278. Original code: facebookresearch/MaskFormer (CC BY-NC 4.0; built on DETR, Apache-2.0).

Written for seglab from the paper and the facts of the original code:
- Pixel decoder (`BasePixelDecoder`): the deepest map goes through a 3x3 conv + GroupNorm(32) + ReLU; every shallower
  map through a 1x1 lateral conv + GroupNorm, added to the nearest-upsampled coarser output, then a 3x3 conv + GN +
  ReLU (convs without bias, as GN follows); a 3x3 conv (with bias) on the stride-4 result gives the mask features.
- Transformer predictor: 100 learned queries (`query_embed`), zero initial targets; a post-norm DETR decoder (self
  attention, cross attention to the flattened deepest backbone map, ReLU FFN, each followed by dropout, residual and
  LayerNorm) with a final LayerNorm applied to the output of every layer for deep supervision (the un-normalised state
  feeds the next layer); no encoder layer (the ADE20K configs set `ENC_LAYERS: 0`). The query position embedding is
  added to the queries (and the keys of self attention); the 2-D sine embedding (normalised, 128 frequencies per axis)
  of the deepest map to the keys of cross attention. The deepest map is projected by a 1x1 conv (`input_proj`) when its
  width differs from the decoder's.
- Outputs: class logits Linear(hidden -> classes + 1, the last being "no object"), mask embeddings by a 3-layer MLP,
  mask logits as the dot product of mask embedding and mask features at stride 4.
- Semantic inference ("probabilistic"): `softmax(class)[..., :-1]` times `sigmoid(mask)`, summed over the queries.

What we changed: attention runs on `F.scaled_dot_product_attention` with separate q/k/v projections (the original's
`nn.MultiheadAttention` fuses them into `in_proj_weight`; `seglab.convert.maskformer` splits it). The original upsamples
the mask logits to the image size before the sigmoid; here the scores are returned at stride 4 and resized outside the
model, like every seglab head (sigmoid then bilinear instead of bilinear then sigmoid: a small difference along mask
borders).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import ConvNormAct


def group_norm_32(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, the pixel decoder's norm (detectron2 `get_norm("GN")`)."""
    return nn.GroupNorm(32, channels)


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """detectron2's conv initialisation: Kaiming-uniform with a = 1 (Caffe2's XavierFill), zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class PixelDecoder(nn.Module):
    """The FPN pixel decoder of MaskFormer (`BasePixelDecoder`).

    Args:
        in_channels: channels of the backbone maps, shallow (stride 4) to deep.
        conv_dim: width of the FPN maps.
        mask_dim: channels of the mask features.
    """

    def __init__(self, in_channels: list[int], conv_dim: int = 256, mask_dim: int = 256) -> None:
        super().__init__()
        # one lateral per map but the deepest, whose output conv reads it directly
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, conv_dim, kernel_size=1, norm_layer=group_norm_32, act_layer=None) for c in in_channels[:-1]
        )
        self.output_convs = nn.ModuleList(
            ConvNormAct(conv_dim, conv_dim, kernel_size=3, norm_layer=group_norm_32) for _ in in_channels[:-1]
        )
        self.output_convs.append(ConvNormAct(in_channels[-1], conv_dim, kernel_size=3, norm_layer=group_norm_32))
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                c2_xavier_fill(module)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Backbone maps (shallow to deep) -> mask features (B, mask_dim, H / 4, W / 4)."""
        y = self.output_convs[-1](features[-1])
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral_convs[i](features[i])
            y = self.output_convs[i](lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
        return self.mask_features(y)


def sine_position_embedding(height: int, width: int, num_feats: int, device: torch.device,
                            dtype: torch.dtype, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised 2-D sine position embedding of an unpadded map.

    Positions 1..H (rows) and 1..W (columns) are scaled to (0, 2 pi] (divided by the last position + 1e-6); each axis
    gives `num_feats` channels interleaving sin (even frequencies) and cos (odd ones) of `pos / t^(2 floor(i/2) / n)`.

    Returns:
        (H * W, 2 * num_feats) tensor, row-major over the map, the row (y) channels first.
    """
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(num_feats, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] / dim_t  # (N, num_feats)
        # sin of the even channels and cos of the odd ones, interleaved back: (N, F/2, 2) -> (N, F)
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    return torch.cat((pos_y, pos_x), dim=2).reshape(height * width, 2 * num_feats).to(dtype)  # (H, W, 2F) -> (HW, 2F)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections; position embeddings are added by the caller.

    Args:
        dim: model width.
        num_heads: attention heads.
        attn_drop: dropout on the attention weights (training only).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query (B, Nq, C), key and value (B, Nk, C) -> (B, Nq, C)."""
        b, nq, c = query.shape
        heads = self.num_heads
        q = self.q_proj(query).reshape(b, nq, heads, c // heads).transpose(1, 2)  # (B, Nq, C) -> (B, h, Nq, C/h)
        k = self.k_proj(key).reshape(b, key.shape[1], heads, c // heads).transpose(1, 2)
        v = self.v_proj(value).reshape(b, value.shape[1], heads, c // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, c))  # (B, h, Nq, C/h) -> (B, Nq, C)


class FeedForward(nn.Module):
    """Linear -> ReLU -> dropout -> Linear, DETR's FFN."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class DecoderLayer(nn.Module):
    """A post-norm DETR decoder layer: self attention, cross attention, FFN, each with dropout, residual, LayerNorm.

    Args:
        dim: model width.
        num_heads: attention heads.
        ffn_dim: hidden width of the FFN.
        dropout: dropout on attention weights, in the FFN and on each residual branch.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        """tgt and query_pos (B, Q, C), memory (B, N, C), memory_pos (N, C) -> (B, Q, C)."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, q, tgt)))
        tgt = self.norm2(tgt + self.drop(self.cross_attn(tgt + query_pos, memory + memory_pos, memory)))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


class TransformerDecoder(nn.Module):
    """A stack of `DecoderLayer`s with the shared final LayerNorm `norm`.

    Args:
        dim: model width.
        num_layers: decoder layers.
        num_heads: attention heads.
        ffn_dim: hidden width of the FFN.
        dropout: dropout of every layer.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, query_pos: torch.Tensor,
                all_layers: bool = True) -> torch.Tensor:
        """Returns the normalised output of every layer (L, B, Q, C), or of the last one only (1, B, Q, C)."""
        outs = []
        for i, layer in enumerate(self.layers):
            tgt = layer(tgt, memory, memory_pos, query_pos)
            if all_layers or i == len(self.layers) - 1:
                # NOTE: as in DETR, the norm is applied to each reported output; the next layer reads the raw state
                outs.append(self.norm(tgt))
        return torch.stack(outs)


class MaskEmbed(nn.Module):
    """The 3-layer MLP (ReLU between layers) mapping query states to mask embeddings."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        dims = [dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TransformerPredictor(nn.Module):
    """Queries attending to the deepest backbone map, and their class and mask predictions.

    Args:
        in_channels: channels of the deepest backbone map.
        num_classes: classes (a "no object" logit is added).
        hidden_dim: decoder width.
        num_queries: learned queries.
        num_heads: attention heads.
        ffn_dim: FFN hidden width.
        dec_layers: decoder layers.
        dropout: decoder dropout.
        mask_dim: channels of the mask features (output of the mask-embedding MLP).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int = 256, num_queries: int = 100,
                 num_heads: int = 8, ffn_dim: int = 2048, dec_layers: int = 6, dropout: float = 0.1,
                 mask_dim: int = 256) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
        self.decoder = TransformerDecoder(hidden_dim, dec_layers, num_heads, ffn_dim, dropout)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MaskEmbed(hidden_dim, hidden_dim, mask_dim)
        # DETR: Xavier-uniform for every matrix of the transformer; detectron2's fill for the projection
        for p in self.decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if isinstance(self.input_proj, nn.Conv2d):
            c2_xavier_fill(self.input_proj)

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor,
                all_layers: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Deepest map (B, C, h, w) and mask features (B, D, H, W) -> class logits (L, B, Q, K + 1) and mask logits
        (L, B, Q, H, W), for every decoder layer (L = layers) or the last one (L = 1)."""
        b, _, h, w = x.shape
        # the position embedding depends on the map's size only
        memory_pos = sine_position_embedding(h, w, self.hidden_dim // 2, x.device, x.dtype)
        memory = self.input_proj(x).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, hw, C)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)  # (Q, C) -> (B, Q, C)
        hs = self.decoder(torch.zeros_like(query_pos), memory, memory_pos, query_pos, all_layers)
        class_logits = self.class_embed(hs)
        mask_logits = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs), mask_features)
        return class_logits, mask_logits


class MaskFormerHead(nn.Module):
    """Pixel decoder + transformer predictor on four backbone maps (the predictor reads the deepest).

    Args:
        in_channels: channels of the backbone maps, shallow (stride 4) to deep.
        num_classes: classes.
        conv_dim: pixel-decoder width.
        mask_dim: mask-feature channels.
        hidden_dim: transformer width.
        num_queries: learned queries.
        num_heads: attention heads.
        ffn_dim: FFN hidden width.
        dec_layers: decoder layers.
        dropout: decoder dropout.
    """

    def __init__(self, in_channels: list[int], num_classes: int, conv_dim: int = 256, mask_dim: int = 256,
                 hidden_dim: int = 256, num_queries: int = 100, num_heads: int = 8, ffn_dim: int = 2048,
                 dec_layers: int = 6, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.align_corners = False
        self.pixel_decoder = PixelDecoder(list(in_channels), conv_dim, mask_dim)
        self.predictor = TransformerPredictor(in_channels[-1], num_classes, hidden_dim, num_queries, num_heads,
                                              ffn_dim, dec_layers, dropout, mask_dim)

    def forward_raw(self, features: list[torch.Tensor],
                    all_layers: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (L, B, Q, K + 1) and mask logits (L, B, Q, H/4, W/4); the last entry is the final output."""
        return self.predictor(features[-1], self.pixel_decoder(features), all_layers)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Semantic scores (B, K, H/4, W/4): class probabilities (no-object dropped) times mask probabilities, summed
        over the queries."""
        class_logits, mask_logits = self.forward_raw(features, all_layers=False)
        return semantic_scores(class_logits[-1], mask_logits[-1])


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """MaskFormer's probabilistic semantic inference.

    Args:
        class_logits: (B, Q, K + 1), the last class being "no object".
        mask_logits: (B, Q, H, W).

    Returns:
        (B, K, H, W) scores `sum_q softmax(class)[q, k] * sigmoid(mask)[q]`.
    """
    probs = class_logits.softmax(-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.sigmoid())
