"""CycleMLP, written from the official file.

Follows ShoufaChen/CycleMLP @ 4e062a03e875d8dc4fbdd5dec96a918494705d38 : `cycle_mlp.py` (`CycleFC`, `CycleMLP`,
`CycleBlock`, `PatchEmbedOverlapping`, `Downsample`, `basic_blocks`, `CycleNet`, `CycleMLP_B1` .. `_B5` and the
dense-prediction `CycleMLP_B1_feat` .. `_B5_feat` that the repository registers for mmseg / mmdet; its `Mlp` is timm's,
copied into the file, and imported here from `official.timm_lite`). Same module names
(`patch_embed.proj`, `network.{0,2,4,6}.{j}.{norm1,attn.{mlp_c,sfc_h,sfc_w,reweight.fc1/fc2,proj},norm2,mlp.fc1/fc2}`,
`network.{1,3,5}.proj`, `norm`/`head` or `norm0/2/4/6`) and forward. The Cycle FC runs on torchvision's
`deform_conv2d` with the fixed `offset` buffer, as in the official code; DropPath is timm's. Quirks kept: the stem is
a 7x7 conv with stride 4 and padding 2, without norm; `mlp_c` has no bias; the reweighting vector is reshaped
`(B, C, 3)` (channel-major); the block LayerNorms are PyTorch's default (`norm_layer` is not forwarded to the blocks);
the `_feat` backbones ignore their keyword arguments (drop path 0) and normalise each stage's last block output with
`norm{idx}` before the next downsampling; `FORK_LAST3` (RetinaNet's Identity `norm0`) is not reproduced.
"""

from __future__ import annotations

import math

import torch
from timm.layers import DropPath
from torch import nn
from torchvision.ops import deform_conv2d

from official.timm_lite import Mlp


class CycleFC(nn.Module):
    """1x1 deformable conv with fixed per-channel integer offsets (`kernel_size` is the cycle's span, not a kernel)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__()
        if stride != 1:
            raise ValueError("stride must be 1")
        if padding != 0:
            raise ValueError("padding must be 0")
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.stride, self.padding, self.dilation = (stride, stride), (padding, padding), (dilation, dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.register_buffer("offset", self.gen_offset())
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(in_channels // groups), 1 / math.sqrt(in_channels // groups))

    def gen_offset(self):
        offset = torch.empty(1, self.in_channels * 2, 1, 1)
        start_idx = (self.kernel_size[0] * self.kernel_size[1]) // 2
        assert self.kernel_size[0] == 1 or self.kernel_size[1] == 1, self.kernel_size
        for i in range(self.in_channels):
            if self.kernel_size[0] == 1:
                offset[0, 2 * i + 0, 0, 0] = 0
                offset[0, 2 * i + 1, 0, 0] = (i + start_idx) % self.kernel_size[1] - (self.kernel_size[1] // 2)
            else:
                offset[0, 2 * i + 0, 0, 0] = (i + start_idx) % self.kernel_size[0] - (self.kernel_size[0] // 2)
                offset[0, 2 * i + 1, 0, 0] = 0
        return offset

    def forward(self, x):
        b, _, h, w = x.size()
        return deform_conv2d(x, self.offset.expand(b, -1, h, w), self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation)


class CycleMLP(nn.Module):
    def __init__(self, dim, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.mlp_c = nn.Linear(dim, dim, bias=qkv_bias)
        self.sfc_h = CycleFC(dim, dim, (1, 3), 1, 0)
        self.sfc_w = CycleFC(dim, dim, (3, 1), 1, 0)
        self.reweight = Mlp(dim, dim // 4, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        b, _, _, c = x.shape  # channels-last
        h = self.sfc_h(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        w = self.sfc_w(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        c_ = self.mlp_c(x)
        a = (h + w + c_).permute(0, 3, 1, 2).flatten(2).mean(2)
        a = self.reweight(a).reshape(b, c, 3).permute(2, 0, 1).softmax(dim=0).unsqueeze(2).unsqueeze(2)
        x = h * a[0] + w * a[1] + c_ * a[2]
        return self.proj_drop(self.proj(x))


class CycleBlock(nn.Module):
    def __init__(self, dim, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0,
                 act_layer=nn.GELU, norm_layer=nn.LayerNorm, skip_lam=1.0, mlp_fn=CycleMLP):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = mlp_fn(dim, qkv_bias=qkv_bias, qk_scale=None, attn_drop=attn_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.skip_lam = skip_lam

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x))) / self.skip_lam
        return x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam


class PatchEmbedOverlapping(nn.Module):
    def __init__(self, patch_size=16, stride=16, padding=0, in_chans=3, embed_dim=768, norm_layer=None, groups=1):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding,
                              groups=groups)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        return self.proj(x)  # NOTE: `norm` is never applied (and is Identity)


class Downsample(nn.Module):
    def __init__(self, in_embed_dim, out_embed_dim, patch_size):
        super().__init__()
        assert patch_size == 2, patch_size
        self.proj = nn.Conv2d(in_embed_dim, out_embed_dim, kernel_size=(3, 3), stride=(2, 2), padding=1)

    def forward(self, x):
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # channels-last in and out


def basic_blocks(dim, index, layers, mlp_ratio=3.0, qkv_bias=False, qk_scale=None, attn_drop=0.0,
                 drop_path_rate=0.0, skip_lam=1.0, mlp_fn=CycleMLP, **kwargs):
    blocks = []
    for block_idx in range(layers[index]):
        block_dpr = drop_path_rate * (block_idx + sum(layers[:index])) / (sum(layers) - 1)
        blocks.append(CycleBlock(dim, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                 attn_drop=attn_drop, drop_path=block_dpr, skip_lam=skip_lam, mlp_fn=mlp_fn))
    return nn.Sequential(*blocks)


class CycleNet(nn.Module):
    def __init__(self, layers, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dims=None,
                 transitions=None, segment_dim=None, mlp_ratios=None, skip_lam=1.0, qkv_bias=False, qk_scale=None,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=nn.LayerNorm, mlp_fn=CycleMLP,
                 fork_feat=False):
        super().__init__()
        if not fork_feat:
            self.num_classes = num_classes
        self.fork_feat = fork_feat
        self.patch_embed = PatchEmbedOverlapping(patch_size=7, stride=4, padding=2, in_chans=3,
                                                 embed_dim=embed_dims[0])
        network = []
        for i in range(len(layers)):
            network.append(basic_blocks(embed_dims[i], i, layers, mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias,
                                        qk_scale=qk_scale, attn_drop=attn_drop_rate, drop_path_rate=drop_path_rate,
                                        norm_layer=norm_layer, skip_lam=skip_lam, mlp_fn=mlp_fn))
            if i >= len(layers) - 1:
                break
            if transitions[i] or embed_dims[i] != embed_dims[i + 1]:
                network.append(Downsample(embed_dims[i], embed_dims[i + 1], 2 if transitions[i] else 1))
        self.network = nn.ModuleList(network)
        if self.fork_feat:
            self.out_indices = [0, 2, 4, 6]
            for i_emb, i_layer in enumerate(self.out_indices):
                self.add_module(f"norm{i_layer}", norm_layer(embed_dims[i_emb]))
        else:
            self.norm = norm_layer(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    def forward_embeddings(self, x):
        return self.patch_embed(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)

    def forward_tokens(self, x):
        outs = []
        for idx, block in enumerate(self.network):
            x = block(x)
            if self.fork_feat and idx in self.out_indices:
                outs.append(getattr(self, f"norm{idx}")(x).permute(0, 3, 1, 2).contiguous())
        if self.fork_feat:
            return outs
        b, _, _, c = x.shape
        return x.reshape(b, -1, c)

    def forward(self, x):
        x = self.forward_tokens(self.forward_embeddings(x))
        if self.fork_feat:
            return x
        return self.head(self.norm(x).mean(1))


# the published variants: (layers, mlp_ratios, embed_dims); transitions are [True] * 4 for all
VARIANTS = {
    "B1": ([2, 2, 4, 2], [4, 4, 4, 4], [64, 128, 320, 512]),
    "B2": ([2, 3, 10, 3], [4, 4, 4, 4], [64, 128, 320, 512]),
    "B3": ([3, 4, 18, 3], [8, 8, 4, 4], [64, 128, 320, 512]),
    "B4": ([3, 8, 27, 3], [8, 8, 4, 4], [64, 128, 320, 512]),
    "B5": ([3, 4, 24, 3], [4, 4, 4, 4], [96, 192, 384, 768]),
}


def cycle_mlp(variant: str, fork_feat: bool = False, **kwargs) -> CycleNet:
    """`CycleMLP_{variant}(**kwargs)` (ImageNet classifier) or `CycleMLP_{variant}_feat()` (dense prediction: keyword
    arguments ignored, as the official `_feat` classes do)."""
    layers, mlp_ratios, embed_dims = VARIANTS[variant]
    if fork_feat:
        kwargs = {}
    return CycleNet(layers, embed_dims=embed_dims, patch_size=7, transitions=[True] * 4, mlp_ratios=mlp_ratios,
                    mlp_fn=CycleMLP, fork_feat=fork_feat, **kwargs)
