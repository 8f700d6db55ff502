"""The AS-MLP segmentation backbone and the UperNet-AS-MLP segmentor, written from the official code.

Follows svip-lab/AS-MLP-Semantic-Segmentation @ c9838f92fae7090d9edc29d4fba7d55e078a91ac :
`mmseg/models/backbones/asmlp.py` (`AxialShift`, `AxialShiftedBlock`, `PatchMerging`, `BasicLayer`, `PatchEmbed`,
`ASMLP`; a fork of the classification file: its `Mlp` and `MyNorm` are that file's (`official.as_mlp.as_mlp`), its
`AxialShift` is that file's constructor without the CUDA `Shift` modules and with the roll shift the classification file
keeps commented out, its `AxialShiftedBlock` that file's block without `input_resolution` (both written as subclasses);
`PatchMerging` (pads odd maps), `BasicLayer` (returns the sizes), `PatchEmbed` (pads the input) and `ASMLP` (outputs,
norms) differ from it; the block's `DropPath` is timm 0.3's, AS-MLP's pin, `official.timm_lite`) and
`configs/asmlp/upernet_asmlp_tiny_patch4_shift5_512x512_160k_ade20k.py` (AS-MLP-T: embed_dim 96, depths (2, 2, 6, 2),
shift_size 5, patch_norm; the `num_heads` it passes are swallowed by `**kwargs`). The configs' base file
`configs/_base_/models/upernet_asmlp.py` is missing from the repository; the heads are those of its
`configs/_base_/models/upernet_swin.py`, which the AS-MLP configs mirror, and the repository's
`mmseg/models/decode_heads/{uper_head,psp_head,fcn_head,decode_head}.py` are byte-identical to the Swin segmentation
code's, so `official.swin_transformer_semantic_segmentation.decode_heads` provides them. Weight initialisation, frozen
stages and checkpointing are left out (eval only). Quirks kept: every norm is `GroupNorm(1, C)` (`MyNorm`); the axial
shift pads by `shift_size // 2` with zeros, splits the channels with `torch.chunk(x, shift_size, 1)` (groups of ceil(C /
shift_size), the last one smaller, fewer groups when they run out), rolls group k by `k - pad` along the width (`lr`) or
height (`td`) and crops; the input is zero-padded right/bottom to a multiple of 4 and odd maps before patch merging,
whose neighbours are concatenated channel-wise in the order (0,0), (1,0), (0,1), (1,1); outputs are each stage's map
before merging, through `norm{i}`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from official.as_mlp import as_mlp
from official.as_mlp.as_mlp import MyNorm
from official.mmcv_lite import EncoderDecoder
from official.swin_transformer_semantic_segmentation.decode_heads import upernet


class AxialShift(as_mlp.AxialShift):
    """The classification file's layer (the same constructor) without its CUDA `Shift` modules, shifting with the
    pad / chunk / roll / crop that the classification file carries commented out."""

    def __init__(self, dim, shift_size, as_bias=True, proj_drop=0.0):
        super().__init__(dim, shift_size, as_bias, proj_drop)
        del self.shift_dim2, self.shift_dim3

    def forward(self, x):
        _, _, H, W = x.shape
        x = self.actn(self.norm1(self.conv1(x)))
        x = F.pad(x, (self.pad, self.pad, self.pad, self.pad), "constant", 0)
        xs = torch.chunk(x, self.shift_size, 1)

        def shift(dim):
            x_cat = torch.cat([torch.roll(x_c, s, dim) for x_c, s in zip(xs, range(-self.pad, self.pad + 1))], 1)
            return torch.narrow(torch.narrow(x_cat, 2, self.pad, H), 3, self.pad, W)

        x_lr = self.actn(self.conv2_1(shift(3)))
        x_td = self.actn(self.conv2_2(shift(2)))
        return self.conv3(self.norm2(x_lr + x_td))


class AxialShiftedBlock(as_mlp.AxialShiftedBlock):
    """The classification file's block (the same code) without `input_resolution` (left None), on this file's
    `AxialShift`."""

    axial_shift_cls = AxialShift

    def __init__(self, dim, shift_size=7, mlp_ratio=4.0, as_bias=True, drop=0.0, drop_path=0.0, act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm):
        super().__init__(dim, None, shift_size, mlp_ratio, as_bias, drop, drop_path, act_layer, norm_layer)


class PatchMerging(nn.Module):
    def __init__(self, dim, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Conv2d(4 * dim, 2 * dim, 1, 1, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x):
        B, C, H, W = x.shape
        if H % 2 == 1 or W % 2 == 1:
            x = F.pad(x, (0, W % 2, 0, H % 2, 0, 0))
        x0 = x[:, :, 0::2, 0::2]
        x1 = x[:, :, 1::2, 0::2]
        x2 = x[:, :, 0::2, 1::2]
        x3 = x[:, :, 1::2, 1::2]
        x = torch.cat([x0, x1, x2, x3], 1).view(B, 4 * C, int(np.ceil(H / 2)), int(np.ceil(W / 2)))
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    def __init__(self, dim, depth, shift_size, mlp_ratio=4.0, as_bias=True, drop=0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm, downsample=None):
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.blocks = nn.ModuleList([
            AxialShiftedBlock(dim=dim, shift_size=shift_size, mlp_ratio=mlp_ratio, as_bias=as_bias, drop=drop,
                              drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path,
                              norm_layer=norm_layer)
            for i in range(depth)])
        self.downsample = downsample(dim=dim, norm_layer=norm_layer) if downsample is not None else None

    def forward(self, x, H, W):
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            return x, H, W, self.downsample(x), (H + 1) // 2, (W + 1) // 2
        return x, H, W, x, H, W


class PatchEmbed(nn.Module):
    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        _, _, H, W = x.shape
        if W % self.patch_size[1] != 0:
            x = F.pad(x, (0, self.patch_size[1] - W % self.patch_size[1]))
        if H % self.patch_size[0] != 0:
            x = F.pad(x, (0, 0, 0, self.patch_size[0] - H % self.patch_size[0]))
        x = self.proj(x)
        return self.norm(x) if self.norm is not None else x


class ASMLP(nn.Module):
    def __init__(self, pretrain_img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
                 shift_size=5, mlp_ratio=4.0, as_bias=True, drop_rate=0.0, drop_path_rate=0.1, norm_layer=MyNorm,
                 patch_norm=True, out_indices=(0, 1, 2, 3), **kwargs):
        super().__init__()
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.out_indices = out_indices
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                                      norm_layer=norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(BasicLayer(
                dim=int(embed_dim * 2**i), depth=depths[i], shift_size=shift_size, mlp_ratio=mlp_ratio,
                as_bias=as_bias, drop=drop_rate, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                norm_layer=norm_layer, downsample=PatchMerging if (i < self.num_layers - 1) else None))
        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]
        for i in out_indices:
            self.add_module(f"norm{i}", norm_layer(self.num_features[i]))

    def forward(self, x):
        x = self.patch_embed(x)
        Wh, Ww = x.size(2), x.size(3)
        x = self.pos_drop(x)
        outs = []
        for i in range(self.num_layers):
            x_out, _, _, x, Wh, Ww = self.layers[i](x, Wh, Ww)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x_out))
        return tuple(outs)


def upernet_asmlp_t(num_classes: int, channels: int = 512, aux_channels: int = 256) -> EncoderDecoder:
    """`configs/asmlp/upernet_asmlp_tiny_patch4_shift5_512x512_160k_ade20k.py`."""
    backbone = ASMLP(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), shift_size=5, drop_path_rate=0.3,
                     patch_norm=True)
    return upernet(backbone, [96, 192, 384, 768], num_classes, channels, aux_channels)
