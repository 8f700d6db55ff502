"""SegViT's ATM decode head, written from the official file.

Follows zbwxp/SegVit @ 763137e687ab830dd4e7352b80ab27e54e0b07e4 : `decode_heads/atm_head.py` (`TPN_Decoder`,
`TPN_DecoderLayer`, `Attention`, `ATMHead`), with mmseg 0.24's `BaseDecodeHead` (`official.mmcv_lite`; its `loss_decode`
child built here from `official.segvit.atm_loss`). Same module names (`input_proj_{i}`, `proj_norm_{i}`,
`decoder_{i}.layers.{j}` = torch `TransformerDecoderLayer`s whose `multihead_attn` is replaced by `Attention` with
separate `q`, `k`, `v`, `proj`; `q` (class queries), `class_embed`; `conv_seg` deleted) and eval forward. The per-stage
loop that builds `input_proj_{i}` / `proj_norm_{i}` / `decoder_{i}` is `add_stages`, since `atm_single_head.py` and
`tpn_atm_head.py` repeat it (with their own decoders). Quirks kept: post-norm torch decoder layers (dropout 0.1, ReLU,
`dim_feedforward = 4 * dim`, sequence-first); the mask of a layer is its cross-attention's **pre-softmax** similarity
averaged over heads; the decoder returns the last layer's; backbone outputs are used deepest first (`x.reverse()`), the
queries carried from stage to stage; `d3_to_d4` assumes a square map and drops the first token of an odd count; masks
accumulate across stages (bilinear to the last stage's size), are resized to `(img_size, img_size)` and combined as
`softmax(class)[..., :-1]` x `sigmoid(mask)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import TransformerDecoder, TransformerDecoderLayer

from official.mmcv_lite import BaseDecodeHead
from official.segvit.atm_loss import build_loss


class TPN_Decoder(TransformerDecoder):
    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        output = tgt
        for mod in self.layers:
            output, attn = mod(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                               tgt_key_padding_mask=tgt_key_padding_mask,
                               memory_key_padding_mask=memory_key_padding_mask)
        if self.norm is not None:
            output = self.norm(output)
        return output, attn


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, xq, xk, xv):
        b, nq, c = xq.size()
        h = self.num_heads
        q = self.q(xq).reshape(b, nq, h, c // h).permute(0, 2, 1, 3)  # (B, heads, Nq, C / heads)
        k = self.k(xk).reshape(b, xk.size(1), h, c // h).permute(0, 2, 1, 3)
        v = self.v(xv).reshape(b, xv.size(1), h, c // h).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn_save = attn.clone()
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, nq, c)
        x = self.proj_drop(self.proj(x))
        return x.transpose(0, 1), attn_save.sum(dim=1) / self.num_heads


class TPN_DecoderLayer(TransformerDecoderLayer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        del self.multihead_attn
        self.multihead_attn = Attention(kwargs["d_model"], num_heads=kwargs["nhead"], qkv_bias=True, attn_drop=0.1)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        tgt2 = self.self_attn(tgt, tgt, tgt, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)[0]
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2, attn2 = self.multihead_attn(tgt.transpose(0, 1), memory.transpose(0, 1), memory.transpose(0, 1))
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        tgt = self.norm3(tgt + self.dropout3(tgt2))
        return tgt, attn2


def d3_to_d4(t):
    n, hw, c = t.size()
    if hw % 2 != 0:
        t = t[:, 1:]
    h = w = int(math.sqrt(hw))
    return t.transpose(1, 2).reshape(n, c, h, w)  # (B, N, C) -> (B, C, h, w), square


def d4_to_d3(t):
    return t.flatten(-2).transpose(-1, -2)


def semantic_inference(mask_cls, mask_pred):
    mask_cls = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", mask_cls, mask_pred.sigmoid())


def add_stages(head, use_stages, dim, use_proj, make_decoder):
    """The per-stage children `input_proj_{i}` (Linear to `dim`, or Identity), `proj_norm_{i}` (LayerNorm, or Identity)
    and `decoder_{i}` (`make_decoder()`), also kept in the lists `input_proj`, `proj_norm`, `decoder`: the loop that
    `ATMHead`, `ATMSingleHead` and `TPNATMHead` repeat, each with its own decoder."""
    head.input_proj, head.proj_norm, head.decoder = [], [], []
    for i in range(use_stages):
        proj = nn.Linear(head.in_channels, dim) if use_proj else nn.Identity()
        norm = nn.LayerNorm(dim) if use_proj else nn.Identity()
        decoder = make_decoder()
        head.add_module(f"input_proj_{i + 1}", proj)
        head.add_module(f"proj_norm_{i + 1}", norm)
        head.add_module(f"decoder_{i + 1}", decoder)
        head.input_proj.append(proj)
        head.proj_norm.append(norm)
        head.decoder.append(decoder)


class ATMHead(BaseDecodeHead):
    decoder_cls = TPN_Decoder  # `ATMSingleHead` (the same constructor) swaps in its own

    def __init__(self, img_size, in_channels, embed_dims=768, num_layers=3, num_heads=8, use_stages=3,
                 use_proj=True, CE_loss=False, crop_train=False, shrink_ratio=None, loss_decode=None,
                 **kwargs):
        super().__init__(in_channels=in_channels, **kwargs)
        self.loss_decode = build_loss(loss_decode)
        self.image_size = img_size
        self.use_stages = use_stages
        dim = embed_dims
        add_stages(self, use_stages, dim, use_proj, lambda: self.decoder_cls(
            TPN_DecoderLayer(d_model=dim, nhead=num_heads, dim_feedforward=dim * 4), num_layers))
        self.q = nn.Embedding(self.num_classes, dim)
        self.class_embed = nn.Linear(dim, self.num_classes + 1)
        delattr(self, "conv_seg")

    def forward_raw(self, inputs):
        """(class logits of every stage (L, B, K, K + 1), cumulative masks of every stage, the final resized mask)."""
        x = [d4_to_d3(s) if s.dim() > 3 else s for s in inputs[: self.use_stages]]
        x.reverse()
        bs = x[0].size()[0]
        attns, maps_size, qs = [], [], []
        q = self.q.weight.repeat(bs, 1, 1).transpose(0, 1)  # (K, B, C): sequence first
        for x_, proj_, norm_, decoder_ in zip(x, self.input_proj, self.proj_norm, self.decoder, strict=True):
            lateral = norm_(proj_(x_))
            q, attn = decoder_(q, lateral.transpose(0, 1))
            attn = d3_to_d4(attn.transpose(-1, -2))
            maps_size.append(attn.size()[-2:])
            qs.append(q.transpose(0, 1))
            attns.append(attn)
        return self.outputs(qs, attns, maps_size[-1], accumulate=True)

    def outputs(self, qs, attns, size, accumulate):
        """The tail of the official forward, the same in `atm_single_head.py` but for `if i_attn == 0` (accumulate)
        versus `if True`: class logits of every output, its mask bilinear to `size` (summed with the previous ones when
        `accumulate`), the last mask resized to `(img_size, img_size)`."""
        outputs_class = self.class_embed(torch.stack(qs, dim=0))
        masks = []
        for i, attn in enumerate(attns):
            up = F.interpolate(attn, size=size, mode="bilinear", align_corners=False)
            masks.append(masks[i - 1] + up if accumulate and i > 0 else up)
        pred_masks = F.interpolate(masks[-1], size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        return outputs_class, torch.stack(masks), pred_masks

    def forward(self, inputs):
        outputs_class, _, pred_masks = self.forward_raw(inputs)
        return semantic_inference(outputs_class[-1], pred_masks)  # eval: `out["pred"]`
