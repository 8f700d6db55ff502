"""SegViT's single-stage ATM head (the decoder of the Shrunk structure), written from the official file.

Follows zbwxp/SegVit @ 763137e687ab830dd4e7352b80ab27e54e0b07e4 : `decode_heads/atm_single_head.py` (`TPN_Decoder`,
which here returns every layer's output and similarity; `ATMSingleHead`), a copy of `atm_head.py` that differs in those
two: `TPN_DecoderLayer`, `Attention`, the head's constructor and its eval output are `atm_head.py`'s, so `ATMSingleHead`
subclasses `official.segvit.atm_head.ATMHead` with its own decoder class and `forward_raw`; mmseg 0.24's
`BaseDecodeHead` is `official.mmcv_lite`'s. Same module names and eval forward. Quirks kept: every decoder layer yields
a (class logits, mask) pair and the masks are *not* accumulated (`if True:`); the prediction is the last layer's; with
`use_proj=False` the projections are `Identity` (no keys).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch.nn import TransformerDecoder

from official.segvit.atm_head import ATMHead, d3_to_d4, d4_to_d3


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


class ATMSingleHead(ATMHead):
    """`ATMHead` with this file's `TPN_Decoder` and its own `forward_raw` (lateral sum, one decoder on the last
    lateral, masks of every layer not accumulated); the official constructor is `ATMHead`'s code less the unused
    `shrink_ratio` argument, and the eval output the same `semantic_inference` of the last layer."""

    decoder_cls = TPN_Decoder

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
        return self.outputs(qs, attns, maps_size[-1], accumulate=False)
