"""SegViT's TPN-ATM head (query-based upsampling of the Shrunk structure), written from the official file.

Follows zbwxp/SegVit @ 763137e687ab830dd4e7352b80ab27e54e0b07e4 : `decode_heads/tpn_atm_head.py` (`TPNATMHead`), with
mmseg 0.24's `BaseDecodeHead` (`official.mmcv_lite`). Same module names (`input_proj_{i}`, `proj_norm_{i}`,
`decoder_{i}` = a standard torch `TransformerDecoder` of `TransformerDecoderLayer`s, built by the loop `atm_head.py`'s
heads repeat, `official.segvit.atm_head.add_stages`; `q` of `(img_size / 16)^2` queries, `atm` =
`ATMSingleHead(use_stages=1, use_proj=False)` built with the head's own keyword arguments, hence its own `loss_decode`;
`conv_seg` deleted) and eval forward. Quirks kept: the backbone outputs are used shallow first (not reversed), each
stage's decoder reads only its own projected tokens; the query output is folded into a square map (`d3_to_d4`) that is
the input of `atm`.
"""

from __future__ import annotations

from torch import nn

from official.mmcv_lite import BaseDecodeHead
from official.segvit.atm_head import add_stages, d3_to_d4, d4_to_d3
from official.segvit.atm_loss import build_loss
from official.segvit.atm_single_head import ATMSingleHead


class TPNATMHead(BaseDecodeHead):
    def __init__(self, img_size, in_channels, embed_dims=768, num_layers=3, num_heads=8, use_stages=3,
                 shrink_ratio=16, use_proj=True, **kwargs):
        super().__init__(in_channels=in_channels, **{k: v for k, v in kwargs.items() if k != "loss_decode"})
        dim = embed_dims
        self.use_stages = use_stages
        self.image_size = img_size
        add_stages(self, use_stages, dim, use_proj, lambda: nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model=dim, nhead=num_heads, dim_feedforward=dim * 4), num_layers))
        self.q = nn.Embedding((img_size // shrink_ratio) ** 2, dim)
        delattr(self, "conv_seg")
        # NOTE: mmseg's BaseDecodeHead builds `loss_decode` here too (checkpoint key `decode_head.loss_decode...`)
        self.loss_decode = build_loss(kwargs["loss_decode"])
        self.atm = ATMSingleHead(img_size, in_channels, embed_dims, num_layers, num_heads, use_stages=1,
                                 use_proj=False, **kwargs)

    def upsampled_queries(self, inputs):
        """The query map (B, C, h, w) that `atm` decodes."""
        x = [d4_to_d3(s) if s.dim() > 3 else s for s in inputs[: self.use_stages]]
        bs = x[0].size()[0]
        q = self.q.weight.repeat(bs, 1, 1).transpose(0, 1)
        for x_, proj_, norm_, decoder_ in zip(x, self.input_proj, self.proj_norm, self.decoder, strict=True):
            lateral = norm_(proj_(x_))
            q = decoder_(q, lateral.transpose(0, 1))
        return d3_to_d4(q.transpose(0, 1))

    def forward_raw(self, inputs):
        return self.atm.forward_raw([self.upsampled_queries(inputs)])

    def forward(self, inputs):
        return self.atm([self.upsampled_queries(inputs)])
