"""SegViT's Shrunk backbone (query-based downsampling inside the ViT), written from the official file.

Follows zbwxp/SegVit @ 763137e687ab830dd4e7352b80ab27e54e0b07e4 : `backbone/vit_shrink.py` (`ShrinkLayer`,
`vit_shrink`), on mmseg 0.24's `VisionTransformer` (`official.segvit.mmseg_vit`). Same module names (the layers are
`ShrinkLayer`s with the mmseg layer's names) and forward (its embedding lines are mmseg's `forward`'s, here
`VisionTransformer.embed`). Quirks kept: at `shrink_idx` the token grid is assumed square (`h = w = sqrt(N)`; an odd
token count first loses a token), the queries are `x[:, :, ::2, ::2]` (top-left of every 2x2 cell) and the keys / values
all tokens, all through the layer's own `ln1`, and the residual adds the downsampled tokens; outputs are token tensors
(B, N, C), not NCHW maps.
"""

from __future__ import annotations

import math

from official.segvit.mmseg_vit import TransformerEncoderLayer, VisionTransformer


class ShrinkLayer(TransformerEncoderLayer):
    def forward(self, x, shrink=False):
        if shrink:
            x = self.attn(query=self.norm1(x[0]), key=self.norm1(x[1]), value=self.norm1(x[1]), identity=x[0])
        else:
            x = self.attn(self.norm1(x), identity=x)
        return self.ffn(self.norm2(x), identity=x)


class vit_shrink(VisionTransformer):
    layer_cls = ShrinkLayer

    def __init__(self, shrink_idx=8, **kwargs):
        super().__init__(**kwargs)
        self.shrink_idx = shrink_idx

    def forward(self, inputs):
        x, _ = self.embed(inputs)
        outs = []
        for i, layer in enumerate(self.layers):
            if i == self.shrink_idx:
                n, hw, c = x.shape
                if hw % 2 != 0:
                    x = x[:, 1:]
                h = w = int(math.sqrt(hw))
                x_ = x.transpose(1, 2).reshape(n, c, h, w)  # (B, N, C) -> (B, C, h, w), square
                down_x = x_[:, :, ::2, ::2].reshape(n, c, hw // 4).transpose(2, 1)
                x = layer((down_x, x), shrink=True)
            else:
                x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                outs.append(x[:, 1:] if self.with_cls_token else x)
        return tuple(outs)
