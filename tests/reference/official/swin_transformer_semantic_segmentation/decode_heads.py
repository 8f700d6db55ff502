"""The mmseg 0.11 UperNet heads of the official Swin segmentation code, and its UperNet-Swin segmentor.

Follows SwinTransformer/Swin-Transformer-Semantic-Segmentation @ 87e6f90577435c94f3e92c7db1d36edc234d91f6 :
`mmseg/models/decode_heads/uper_head.py` (`UPerHead`), `mmseg/models/decode_heads/psp_head.py` (`PPM`),
`mmseg/models/decode_heads/fcn_head.py` (`FCNHead`, mmseg 0.x's: `official.mmcv_lite`),
`configs/_base_/models/upernet_swin.py` and `configs/swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k.py`
(UPerHead: in_index 0-3, pool_scales (1, 2, 3, 6), channels 512, dropout 0.1, SyncBN, align_corners False; auxiliary
FCNHead on in_index 2, channels 256, one conv, no concat_input, dropout 0.1). These files are byte-identical in
svip-lab/AS-MLP-Semantic-Segmentation @ c9838f92fae7090d9edc29d4fba7d55e078a91ac. Quirks kept: the PPM's branches are
`nn.Sequential(AdaptiveAvgPool2d, ConvModule)` (keys `psp_modules.{k}.1.*`), upsampled bilinearly to the input with the
head's `align_corners`; the top-down path adds each upsampled lateral in place; every FPN level is resized to the
stride-4 size before the `fpn_bottleneck`; the lateral and FPN ConvModules are built with `inplace=False` (same
numerics).
"""

from __future__ import annotations

import torch
from torch import nn

from official.mmcv_lite import BaseDecodeHead, ConvModule, EncoderDecoder, FCNHead, resize
from official.swin_transformer_semantic_segmentation.swin_transformer import SwinTransformer

SYNC_BN = {"type": "SyncBN", "requires_grad": True}


class PPM(nn.ModuleList):
    def __init__(self, pool_scales, in_channels, channels, conv_cfg, norm_cfg, act_cfg, align_corners):
        super().__init__()
        self.pool_scales = pool_scales
        self.align_corners = align_corners
        for pool_scale in pool_scales:
            self.append(nn.Sequential(
                nn.AdaptiveAvgPool2d(pool_scale),
                ConvModule(in_channels, channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)))

    def forward(self, x):
        return [resize(ppm(x), size=x.size()[2:], mode="bilinear", align_corners=self.align_corners) for ppm in self]


class UPerHead(BaseDecodeHead):
    def __init__(self, pool_scales=(1, 2, 3, 6), **kwargs):
        super().__init__(input_transform="multiple_select", **kwargs)
        common = {"conv_cfg": self.conv_cfg, "norm_cfg": self.norm_cfg, "act_cfg": self.act_cfg}
        self.psp_modules = PPM(pool_scales, self.in_channels[-1], self.channels, align_corners=self.align_corners,
                               **common)
        self.bottleneck = ConvModule(self.in_channels[-1] + len(pool_scales) * self.channels, self.channels, 3,
                                     padding=1, **common)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for in_channels in self.in_channels[:-1]:
            self.lateral_convs.append(ConvModule(in_channels, self.channels, 1, inplace=False, **common))
            self.fpn_convs.append(ConvModule(self.channels, self.channels, 3, padding=1, inplace=False, **common))
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * self.channels, self.channels, 3, padding=1, **common)

    def psp_forward(self, inputs):
        x = inputs[-1]
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward(self, inputs):
        inputs = self._transform_inputs(inputs)
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs))
        levels = len(laterals)
        for i in range(levels - 1, 0, -1):
            laterals[i - 1] += resize(laterals[i], size=laterals[i - 1].shape[2:], mode="bilinear",
                                      align_corners=self.align_corners)
        fpn_outs = [self.fpn_convs[i](laterals[i]) for i in range(levels - 1)]
        fpn_outs.append(laterals[-1])
        for i in range(levels - 1, 0, -1):
            fpn_outs[i] = resize(fpn_outs[i], size=fpn_outs[0].shape[2:], mode="bilinear",
                                 align_corners=self.align_corners)
        return self.cls_seg(self.fpn_bottleneck(torch.cat(fpn_outs, dim=1)))


def upernet(backbone: nn.Module, in_channels: list[int], num_classes: int, channels: int = 512,
            aux_channels: int = 256) -> EncoderDecoder:
    """`configs/_base_/models/upernet_swin.py`'s heads on `backbone` (`channels` / `aux_channels` as configured)."""
    decode_head = UPerHead(in_channels=in_channels, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                           channels=channels, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=SYNC_BN,
                           align_corners=False)
    auxiliary_head = FCNHead(in_channels=in_channels[2], in_index=2, channels=aux_channels, num_convs=1,
                             concat_input=False, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=SYNC_BN,
                             align_corners=False)
    return EncoderDecoder(backbone, decode_head, auxiliary_head)


def upernet_swin_t(num_classes: int, channels: int = 512, aux_channels: int = 256) -> EncoderDecoder:
    """`configs/swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k.py`."""
    backbone = SwinTransformer(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                               mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                               drop_path_rate=0.3, patch_norm=True, out_indices=(0, 1, 2, 3))
    return upernet(backbone, [96, 192, 384, 768], num_classes, channels, aux_channels)
