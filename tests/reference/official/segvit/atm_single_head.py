"""SegViT's single-stage ATM head (the decoder of the Shrunk structure), written from the official file.

Follows zbwxp/SegVit @ 763137e687ab830dd4e7352b80ab27e54e0b07e4 : `decode_heads/atm_single_head.py` (`TPN_Decoder`,
which here returns every layer's output and similarity; `ATMSingleHead`), with the `TPN_DecoderLayer` / `Attention`
of `atm_head.py` (identical in both files) and mmseg 0.24's `BaseDecodeHead` (`official.mmcv_lite`). Same module
names and eval forward. Quirks kept: every decoder layer yields a (class logits, mask) pair and the masks are *not*
accumulated (`if True:`); the prediction is the last layer's; with `use_proj=False` the projections are `Identity`
(no keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import TransformerDecoder

from official.mmcv_lite import BaseDecodeHead
from official.segvit.atm_head import TPN_DecoderLayer, d3_to_d4, d4_to_d3, semantic_inference
from official.segvit.atm_loss import build_loss


class TPN_Decoder(TransformerDecoder):
    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        output = tgt
        attns, outputs = [], []
        for mod in self.layers:
            output, attn = mod(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                               tgt_key_padding_mask=tgt_key_padding_mask,
                               memory_key_padding_mask=memory_key_padding_mask)
            attns.append(attn)
            outputs.append(output)
        if self.norm is not None:
            output = self.norm(output)
        return outputs, attns


class ATMSingleHead(BaseDecodeHead):
    def __init__(self, img_size, in_channels, embed_dims=768, num_layers=3, num_heads=8, use_stages=3,
                 use_proj=True, CE_loss=False, crop_train=False, loss_decode=None, **kwargs):
        super().__init__(in_channels=in_channels, **kwargs)
        self.loss_decode = build_loss(loss_decode)
        self.image_size = img_size
        self.use_stages = use_stages
        dim = embed_dims
        self.input_proj, self.proj_norm, self.decoder = [], [], []
        for i in range(use_stages):
            proj = nn.Linear(self.in_channels, dim) if use_proj else nn.Identity()
            norm = nn.LayerNorm(dim) if use_proj else nn.Identity()
            decoder = TPN_Decoder(TPN_DecoderLayer(d_model=dim, nhead=num_heads, dim_feedforward=dim * 4), num_layers)
            self.add_module(f"input_proj_{i + 1}", proj)
            self.add_module(f"proj_norm_{i + 1}", norm)
            self.add_module(f"decoder_{i + 1}", decoder)
            self.input_proj.append(proj)
            self.proj_norm.append(norm)
            self.decoder.append(decoder)
        self.q = nn.Embedding(self.num_classes, dim)
        self.class_embed = nn.Linear(dim, self.num_classes + 1)
        delattr(self, "conv_seg")

    def forward_raw(self, inputs):
        """(class logits of every layer (L, B, K, K + 1), masks of every layer, the final resized mask)."""
        x = [d4_to_d3(s) if s.dim() > 3 else s for s in inputs[: self.use_stages]]
        x.reverse()
        bs = x[0].size()[0]
        laterals = []
        for idx, (x_, proj_, norm_) in enumerate(zip(x, self.input_proj, self.proj_norm, strict=True)):
            lateral = norm_(proj_(x_))
            if idx == 0:
                laterals.append(lateral)
            elif laterals[idx - 1].size()[1] == lateral.size()[1]:
                laterals.append(lateral + laterals[idx - 1])
            else:
                l_ = F.interpolate(d3_to_d4(laterals[idx - 1]), scale_factor=2, mode="nearest")
                laterals.append(d4_to_d3(l_) + lateral)
        lateral = laterals[-1]
        q = self.q.weight.repeat(bs, 1, 1).transpose(0, 1)
        attns, maps_size, qs = [], [], []
        for decoder_ in self.decoder:
            q_, attn_ = decoder_(q, lateral.transpose(0, 1))
            for q, attn in zip(q_, attn_, strict=True):
                attn = d3_to_d4(attn.transpose(-1, -2))
                maps_size.append(attn.size()[-2:])
                qs.append(q.transpose(0, 1))
                attns.append(attn)
        outputs_class = self.class_embed(torch.stack(qs, dim=0))
        size = maps_size[-1]
        masks = [F.interpolate(attn, size=size, mode="bilinear", align_corners=False) for attn in attns]
        pred_masks = F.interpolate(masks[-1], size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        return outputs_class, torch.stack(masks), pred_masks

    def forward(self, inputs):
        outputs_class, _, pred_masks = self.forward_raw(inputs)
        return semantic_inference(outputs_class[-1], pred_masks)
