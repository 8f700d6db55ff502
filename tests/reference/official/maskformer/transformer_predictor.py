"""MaskFormer's transformer predictor, written from the official file.

Follows facebookresearch/MaskFormer @ da3e60d85fdeedcb31476b5edd7d328826ce56cc :
`mask_former/modeling/transformer/transformer_predictor.py` (`TransformerPredictor`, `MLP`). Same module names
(`pe_layer` (no parameters), `transformer`, `query_embed`, `input_proj` (a detectron2 `Conv2d` 1x1 with bias, or an
empty `Sequential` when the widths agree), `class_embed`, `mask_embed.layers.{0,1,2}`) and forward with deep
supervision (`aux_outputs` of every decoder layer but the last). No padding mask reaches the transformer (`mask =
None`), so padded pixels of the image are attended to like the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from official.maskformer.detectron2_layers import Conv2d
from official.maskformer.position_encoding import PositionEmbeddingSine
from official.maskformer.transformer import Transformer


class MLP(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim, *h], [*h, output_dim], strict=True))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class TransformerPredictor(nn.Module):
    def __init__(self, in_channels, mask_classification=True, *, num_classes, hidden_dim, num_queries, nheads,
                 dropout, dim_feedforward, enc_layers, dec_layers, pre_norm, deep_supervision, mask_dim,
                 enforce_input_project):
        super().__init__()
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer = Transformer(d_model=hidden_dim, dropout=dropout, nhead=nheads,
                                       dim_feedforward=dim_feedforward, num_encoder_layers=enc_layers,
                                       num_decoder_layers=dec_layers, normalize_before=pre_norm,
                                       return_intermediate_dec=deep_supervision)
        self.num_queries = num_queries
        hidden_dim = self.transformer.d_model
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_project:
            self.input_proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
        else:
            self.input_proj = nn.Sequential()
        self.aux_loss = deep_supervision
        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, x, mask_features):
        pos = self.pe_layer(x)
        hs, _ = self.transformer(self.input_proj(x), None, self.query_embed.weight, pos)
        outputs_class = self.class_embed(hs)
        out = {"pred_logits": outputs_class[-1]}
        if self.aux_loss:
            outputs_seg_masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs), mask_features)
            out["pred_masks"] = outputs_seg_masks[-1]
            out["aux_outputs"] = [{"pred_logits": a, "pred_masks": b}
                                  for a, b in zip(outputs_class[:-1], outputs_seg_masks[:-1], strict=True)]
        else:
            out["pred_masks"] = torch.einsum("bqc,bchw->bqhw", self.mask_embed(hs[-1]), mask_features)
        return out
