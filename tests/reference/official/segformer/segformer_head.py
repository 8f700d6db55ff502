"""The All-MLP decode head of NVlabs/SegFormer and the segmentor of its configs, written from the official code.

Follows NVlabs/SegFormer @ 65fa8cfa9b52b6ee7e8897a98705abf8570f9e32 : `mmseg/models/decode_heads/segformer_head.py`
(`MLP`, `SegFormerHead`), `local_configs/_base_/models/segformer.py` and `local_configs/segformer/B*/*.py`
(EncoderDecoder; head `channels=128`, `dropout_ratio=0.1`, SyncBN, `align_corners=False`,
`decoder_params.embed_dim` 256 for B0/B1 and 768 for B2-B5). Quirks kept: mmseg's `BaseDecodeHead` builds `conv_seg`
(`channels=128` -> classes) that the head's forward never calls (`linear_pred` is the classifier), so released
checkpoints hold it; the fuse conv reads `cat([c4, c3, c2, c1])`; the upsampling is bilinear with
`align_corners=False` written in the forward (not the head's setting).
"""

from __future__ import annotations

import torch
from torch import nn

from official.mmcv_lite import BaseDecodeHead, ConvModule, EncoderDecoder, resize
from official.segformer.mix_transformer import mit


class MLP(nn.Module):
    """Linear embedding of a (B, C, H, W) map into (B, H*W, embed_dim) tokens."""

    def __init__(self, input_dim=2048, embed_dim=768):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x):
        return self.proj(x.flatten(2).transpose(1, 2))


class SegFormerHead(BaseDecodeHead):
    def __init__(self, feature_strides, **kwargs):
        super().__init__(input_transform="multiple_select", **kwargs)
        assert len(feature_strides) == len(self.in_channels)
        c1_in, c2_in, c3_in, c4_in = self.in_channels
        embedding_dim = kwargs["decoder_params"]["embed_dim"]
        self.linear_c4 = MLP(input_dim=c4_in, embed_dim=embedding_dim)
        self.linear_c3 = MLP(input_dim=c3_in, embed_dim=embedding_dim)
        self.linear_c2 = MLP(input_dim=c2_in, embed_dim=embedding_dim)
        self.linear_c1 = MLP(input_dim=c1_in, embed_dim=embedding_dim)
        self.linear_fuse = ConvModule(embedding_dim * 4, embedding_dim, 1, norm_cfg={"type": "SyncBN"})
        self.linear_pred = nn.Conv2d(embedding_dim, self.num_classes, kernel_size=1)

    def forward(self, inputs):
        c1, c2, c3, c4 = self._transform_inputs(inputs)
        n = c4.shape[0]

        def embed(linear, c):  # (B, N, E) tokens back to (B, E, h, w), then to the stride-4 size
            out = linear(c).permute(0, 2, 1).reshape(n, -1, c.shape[2], c.shape[3])
            return out if c is c1 else resize(out, size=c1.size()[2:], mode="bilinear", align_corners=False)

        _c = self.linear_fuse(torch.cat([embed(self.linear_c4, c4), embed(self.linear_c3, c3),
                                         embed(self.linear_c2, c2), embed(self.linear_c1, c1)], dim=1))
        return self.linear_pred(self.dropout(_c))


def segformer(variant: str, num_classes: int, embed_dim: int | None = None) -> EncoderDecoder:
    """The segmentor of `local_configs/segformer/B*/segformer.b*.*.py` (`embed_dim` defaults to the config's)."""
    backbone = mit(variant)
    in_channels = [backbone.norm1.normalized_shape[0], backbone.norm2.normalized_shape[0],
                   backbone.norm3.normalized_shape[0], backbone.norm4.normalized_shape[0]]
    head = SegFormerHead(
        feature_strides=[4, 8, 16, 32], in_channels=in_channels, in_index=[0, 1, 2, 3], channels=128,
        dropout_ratio=0.1, num_classes=num_classes, norm_cfg={"type": "SyncBN", "requires_grad": True},
        align_corners=False, decoder_params={"embed_dim": embed_dim or (256 if variant in ("b0", "b1") else 768)})
    return EncoderDecoder(backbone, head)
