"""The ImageNet AS-MLP classifier, written from the official code.

Follows svip-lab/AS-MLP @ dd1eb4f768f46fdf7c8522fd535ea9e15f664fae : `models/as_mlp.py` (`Mlp`, `AxialShift`,
`AxialShiftedBlock`, `PatchMerging`, `BasicLayer`, `PatchEmbed`, `MyNorm`, `AS_MLP`), `models/shift_cuda.py` (`Shift`),
`models/build.py` and `configs/as_tiny_patch4_shift5_224.yaml` (AS-MLP-T: embed_dim 96, depths (2, 2, 6, 2), shift 5);
`utils.py` saves `{'model': state_dict, ...}`. Same module names and forward; weight initialisation, FLOP counts and
checkpointing are left out (eval only). `DropPath` is timm 0.3.2's (the README's pin; `official.timm_lite`).
AS-MLP-Semantic-Segmentation's `asmlp.py` shares this file's `Mlp`, `MyNorm`, `AxialShift` constructor and
`AxialShiftedBlock` (imported from here; its block drops `input_resolution` and builds its own `AxialShift`, which drops
the `Shift` modules). The shift is the CuPy kernel's rule, written here with tensor slicing (the kernel raises on the
CPU): channel c is in group g = c // ceil(C / shift_size) and reads its input at offset s = -(g - shift_size // 2) along
the shifted dimension, zero outside the map (`out[c, h, w] = in[c, h + s, w]` for dim 2). The `Shift` modules hold no
tensors. Quirks kept: the input must be exactly `img_size` (asserted) and every merged map even; every norm is
`GroupNorm(1, C)`; the classifier is `norm` (GroupNorm on the last stage), global average pooling and `head`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from official.timm_lite import DropPath


def MyNorm(dim):  # the official name
    return nn.GroupNorm(1, dim)


class Shift(nn.Module):
    def __init__(self, kernel_size, dim):
        super().__init__()
        assert dim in (2, 3) and kernel_size % 2 == 1
        self.kernel_size = kernel_size
        self.dim = dim

    def forward(self, x):
        if self.kernel_size == 1:
            return x
        channels, size = x.shape[1], x.shape[self.dim]
        group = math.ceil(channels / self.kernel_size)
        out = torch.zeros_like(x)
        for start in range(0, channels, group):
            s = -(start // group - self.kernel_size // 2)  # out[.., i, ..] = in[.., i + s, ..] where in range
            lo, hi = max(0, -s), min(size, size - s)
            if hi <= lo:
                continue
            dst = out[:, start:start + group].narrow(self.dim, lo, hi - lo)
            dst.copy_(x[:, start:start + group].narrow(self.dim, lo + s, hi - lo))
        return out


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_features, out_features, 1, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class AxialShift(nn.Module):
    def __init__(self, dim, shift_size, as_bias=True, proj_drop=0.0):
        super().__init__()
        self.dim = dim
        self.shift_size = shift_size
        self.pad = shift_size // 2
        self.conv1 = nn.Conv2d(dim, dim, 1, 1, 0, groups=1, bias=as_bias)
        self.conv2_1 = nn.Conv2d(dim, dim, 1, 1, 0, groups=1, bias=as_bias)
        self.conv2_2 = nn.Conv2d(dim, dim, 1, 1, 0, groups=1, bias=as_bias)
        self.conv3 = nn.Conv2d(dim, dim, 1, 1, 0, groups=1, bias=as_bias)
        self.actn = nn.GELU()
        self.norm1 = MyNorm(dim)
        self.norm2 = MyNorm(dim)
        self.shift_dim2 = Shift(self.shift_size, 2)
        self.shift_dim3 = Shift(self.shift_size, 3)

    def forward(self, x):
        x = self.actn(self.norm1(self.conv1(x)))
        x_lr = self.actn(self.conv2_1(self.shift_dim3(x)))
        x_td = self.actn(self.conv2_2(self.shift_dim2(x)))
        return self.conv3(self.norm2(x_lr + x_td))


class AxialShiftedBlock(nn.Module):
    axial_shift_cls = AxialShift  # the segmentation tree's block (the same code, less `input_resolution`) has its own

    def __init__(self, dim, input_resolution, shift_size=7, mlp_ratio=4.0, as_bias=True, drop=0.0, drop_path=0.0,
                 act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        self.norm1 = norm_layer(dim)
        self.axial_shift = self.axial_shift_cls(dim, shift_size=shift_size, as_bias=as_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x):
        x = x + self.drop_path(self.axial_shift(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    def __init__(self, input_resolution, dim, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.reduction = nn.Conv2d(4 * dim, 2 * dim, 1, 1, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x):
        _, _, H, W = x.shape
        assert H % 2 == 0 and W % 2 == 0, f"x size ({H}*{W}) are not even."
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], 1)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    def __init__(self, dim, input_resolution, depth, shift_size, mlp_ratio=4.0, as_bias=True, drop=0.0,
                 drop_path=0.0, norm_layer=nn.LayerNorm, downsample=None):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.blocks = nn.ModuleList([
            AxialShiftedBlock(dim=dim, input_resolution=input_resolution, shift_size=shift_size, mlp_ratio=mlp_ratio,
                              as_bias=as_bias, drop=drop,
                              drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path,
                              norm_layer=norm_layer)
            for i in range(depth)])
        self.downsample = (downsample(input_resolution, dim=dim, norm_layer=norm_layer)
                           if downsample is not None else None)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.patches_resolution = [img_size // patch_size, img_size // patch_size]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        _, _, H, W = x.shape
        assert (H, W) == self.img_size, f"Input image size ({H}*{W}) doesn't match model {self.img_size}."
        x = self.proj(x)
        return self.norm(x) if self.norm is not None else x


class AS_MLP(nn.Module):  # the official name
    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
                 shift_size=5, mlp_ratio=4.0, as_bias=True, drop_rate=0.0, drop_path_rate=0.1, norm_layer=MyNorm,
                 patch_norm=True, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, norm_layer=norm_layer if patch_norm else None)
        resolution = self.patch_embed.patches_resolution
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(BasicLayer(
                dim=int(embed_dim * 2**i), input_resolution=(resolution[0] // 2**i, resolution[1] // 2**i),
                depth=depths[i], shift_size=shift_size, mlp_ratio=mlp_ratio, as_bias=as_bias, drop=drop_rate,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_layer=norm_layer,
                downsample=PatchMerging if (i < self.num_layers - 1) else None))
        self.norm = norm_layer(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return torch.flatten(self.avgpool(self.norm(x)), 1)  # (B, C, H, W) -> (B, C)

    def forward(self, x):
        return self.head(self.forward_features(x))

    def stage_outputs(self, x):
        """Each stage's map before its patch merging (what the segmentation backbone normalises and returns)."""
        outs = []
        hooks = [layer.blocks[-1].register_forward_hook(lambda module, args, out: outs.append(out))
                 for layer in self.layers]
        try:
            self(x)
        finally:
            for hook in hooks:
                hook.remove()
        return outs


def as_mlp_t(img_size: int = 224, num_classes: int = 1000) -> AS_MLP:
    """`configs/as_tiny_patch4_shift5_224.yaml` (`img_size` smaller for a fast test: any multiple of 32 works)."""
    return AS_MLP(img_size=img_size, patch_size=4, in_chans=3, num_classes=num_classes, embed_dim=96,
                  depths=(2, 2, 6, 2), shift_size=5, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.2,
                  patch_norm=True)
