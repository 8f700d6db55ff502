"""MaskFormer's Swin backbone (`D2SwinTransformer`), written from the official file.

Follows facebookresearch/MaskFormer @ da3e60d85fdeedcb31476b5edd7d328826ce56cc : `mask_former/modeling/backbone/swin.py`
(`SwinTransformer`, `D2SwinTransformer`) and `mask_former/config.py` (`MODEL.SWIN` defaults: patch 4, MLP ratio 4, qkv
bias, no absolute position embedding, patch norm, out features res2..res5). The file is "Modified by Bowen Cheng from"
Swin-Transformer-Semantic-Segmentation's `mmseg/models/backbones/swin_transformer.py`: its `Mlp`, `window_partition`,
`window_reverse`, `WindowAttention`, `SwinTransformerBlock`, `PatchMerging`, `BasicLayer`, `PatchEmbed` and
`SwinTransformer.__init__` are that file's code (reformatted; the same timm `DropPath` import), so they come from
`official.swin_transformer_semantic_segmentation.swin_transformer`; what differs is kept here: `forward` returns a dict
`res{i + 2}` instead of a tuple, the mmseg registry / `init_weights` (pretrained loading) are gone, and
`D2SwinTransformer` wraps it for detectron2 (`MODEL.SWIN` config, `_out_features` filter, `size_divisibility` 32). Same
module names (`patch_embed.proj` / `.norm`,
`layers.{i}.blocks.{j}.{norm1,attn.{relative_position_bias_table,relative_position_index,qkv,proj},norm2,mlp.fc1/fc2}`,
`layers.{i}.downsample.{reduction,norm}`, `norm{i}`) and forward. Quirks kept (the Swin segmentation code's): every
block pads its normalised map with zeros to window multiples and crops back; odd blocks always shift by `window // 2`
with the -100 region mask, also when the map is smaller than the window (the classification code would shrink the window
instead); the image is zero-padded right / bottom to a multiple of 4; patch merging pads odd sizes.
"""

from __future__ import annotations

from torch import nn

from official.swin_transformer_semantic_segmentation import swin_transformer as swin_seg


class SwinTransformer(swin_seg.SwinTransformer):
    """The Swin segmentation backbone, outputs named `res2` .. `res5` (the official class differs only there)."""

    def forward(self, x):
        out_indices = [i for i in range(self.num_layers) if i in self.out_indices]
        return {f"res{i + 2}": out for i, out in zip(out_indices, super().forward(x), strict=True)}


class D2SwinTransformer(SwinTransformer):
    """`D2SwinTransformer(cfg, input_shape)` for the `MODEL.SWIN` values given as keyword arguments."""

    def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                 drop_path_rate=0.3, out_features=("res2", "res3", "res4", "res5")):
        super().__init__(224, 4, 3, embed_dim, depths, num_heads, window_size, 4.0, True, None, 0.0, 0.0,
                         drop_path_rate, nn.LayerNorm, False, True)
        self._out_features = list(out_features)

    def forward(self, x):
        return {k: v for k, v in super().forward(x).items() if k in self._out_features}

    @property
    def size_divisibility(self):
        return 32
