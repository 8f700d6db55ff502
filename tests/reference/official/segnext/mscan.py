"""The MSCAN encoder of SegNeXt, written from the official code.

Follows Visual-Attention-Network/SegNeXt @ c87bcaef22ed2ad72ed3decb3727e5f879343516 : `mmseg/models/backbones/mscan.py`
(`Mlp`, `StemConv`, `AttentionModule`, `SpatialAttention`, `Block`, `OverlapPatchEmbed`, `MSCAN`, `DWConv`) and
`local_configs/_base_/models/mscan.py` (SegNeXt-T: embed_dims (32, 64, 160, 256), mlp_ratios (8, 8, 4, 4), depths
(3, 3, 5, 2), SyncBN). Same module names and forward; weight initialisation and the mmcv `BaseModule` machinery are
left out (eval only). Quirks kept: the block norms and the patch-embedding norms are BatchNorm (SyncBN in the configs),
the stage-end norms `norm{i}` are `nn.LayerNorm` (eps 1e-5); the spatial attention adds its own input back
(`x + shortcut` inside `SpatialAttention`); the 5x5 output is part of the multi-scale sum; `DWConv` wraps the MLP's
depth-wise conv (`mlp.dwconv.dwconv`); layer scales start at 1e-2.
"""

from __future__ import annotations

import torch
from torch import nn

from official.mmcv_lite import build_norm_layer
from official.timm_lite import DropPath  # mmcv's `cnn/bricks/drop.py`, the same function as timm's

SYNC_BN = {"type": "SyncBN", "requires_grad": True}


class DWConv(nn.Module):
    def __init__(self, dim=768):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x):
        return self.dwconv(x)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1)
        self.dwconv = DWConv(hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_features, out_features, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class StemConv(nn.Module):
    def __init__(self, in_channels, out_channels, norm_cfg=SYNC_BN):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, out_channels // 2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            build_norm_layer(norm_cfg, out_channels // 2)[1],
            nn.GELU(),
            nn.Conv2d(out_channels // 2, out_channels, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            build_norm_layer(norm_cfg, out_channels)[1],
        )

    def forward(self, x):
        x = self.proj(x)
        _, _, H, W = x.size()
        return x.flatten(2).transpose(1, 2), H, W  # (B, C, H, W) -> (B, N, C)


class AttentionModule(nn.Module):
    """Multi-scale convolutional attention: 5x5 depth-wise, three strip branches (7, 11, 21), 1x1 mix, gating."""

    def __init__(self, dim):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv0_1 = nn.Conv2d(dim, dim, (1, 7), padding=(0, 3), groups=dim)
        self.conv0_2 = nn.Conv2d(dim, dim, (7, 1), padding=(3, 0), groups=dim)
        self.conv1_1 = nn.Conv2d(dim, dim, (1, 11), padding=(0, 5), groups=dim)
        self.conv1_2 = nn.Conv2d(dim, dim, (11, 1), padding=(5, 0), groups=dim)
        self.conv2_1 = nn.Conv2d(dim, dim, (1, 21), padding=(0, 10), groups=dim)
        self.conv2_2 = nn.Conv2d(dim, dim, (21, 1), padding=(10, 0), groups=dim)
        self.conv3 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        u = x.clone()
        attn = self.conv0(x)
        attn_0 = self.conv0_2(self.conv0_1(attn))
        attn_1 = self.conv1_2(self.conv1_1(attn))
        attn_2 = self.conv2_2(self.conv2_1(attn))
        attn = self.conv3(attn + attn_0 + attn_1 + attn_2)
        return attn * u


class SpatialAttention(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.d_model = d_model
        self.proj_1 = nn.Conv2d(d_model, d_model, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = AttentionModule(d_model)
        self.proj_2 = nn.Conv2d(d_model, d_model, 1)

    def forward(self, x):
        shortcut = x.clone()
        x = self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))
        return x + shortcut


class Block(nn.Module):
    def __init__(self, dim, mlp_ratio=4.0, drop=0.0, drop_path=0.0, act_layer=nn.GELU, norm_cfg=SYNC_BN):
        super().__init__()
        self.norm1 = build_norm_layer(norm_cfg, dim)[1]
        self.attn = SpatialAttention(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = build_norm_layer(norm_cfg, dim)[1]
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.layer_scale_1 = nn.Parameter(1e-2 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-2 * torch.ones(dim))

    def forward(self, x, H, W):
        B, N, C = x.shape
        x = x.permute(0, 2, 1).view(B, C, H, W)  # (B, N, C) -> (B, C, H, W)
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))
        return x.view(B, C, N).permute(0, 2, 1)  # (B, C, H, W) -> (B, N, C)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch_size=7, stride=4, in_chans=3, embed_dim=768, norm_cfg=SYNC_BN):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride,
                              padding=(patch_size // 2, patch_size // 2))
        self.norm = build_norm_layer(norm_cfg, embed_dim)[1]

    def forward(self, x):
        x = self.proj(x)
        _, _, H, W = x.shape
        return self.norm(x).flatten(2).transpose(1, 2), H, W


class MSCAN(nn.Module):
    def __init__(self, in_chans=3, embed_dims=(64, 128, 256, 512), mlp_ratios=(4, 4, 4, 4), drop_rate=0.0,
                 drop_path_rate=0.0, depths=(3, 4, 6, 3), num_stages=4, norm_cfg=SYNC_BN):
        super().__init__()
        self.depths = depths
        self.num_stages = num_stages
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        cur = 0
        for i in range(num_stages):
            if i == 0:
                patch_embed = StemConv(3, embed_dims[0], norm_cfg=norm_cfg)
            else:
                patch_embed = OverlapPatchEmbed(patch_size=3, stride=2, in_chans=embed_dims[i - 1],
                                                embed_dim=embed_dims[i], norm_cfg=norm_cfg)
            block = nn.ModuleList([Block(dim=embed_dims[i], mlp_ratio=mlp_ratios[i], drop=drop_rate,
                                         drop_path=dpr[cur + j], norm_cfg=norm_cfg) for j in range(depths[i])])
            cur += depths[i]
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", block)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i]))

    def forward(self, x):
        B = x.shape[0]
        outs = []
        for i in range(self.num_stages):
            x, H, W = getattr(self, f"patch_embed{i + 1}")(x)
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, H, W)
            x = getattr(self, f"norm{i + 1}")(x)
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()  # (B, N, C) -> (B, C, H, W)
            outs.append(x)
        return outs


def mscan_t() -> MSCAN:
    """The backbone of `local_configs/_base_/models/mscan.py` (SegNeXt-T)."""
    return MSCAN(embed_dims=(32, 64, 160, 256), mlp_ratios=(8, 8, 4, 4), drop_rate=0.0, drop_path_rate=0.1,
                 depths=(3, 3, 5, 2), norm_cfg=SYNC_BN)
