"""mmseg 0.24's `VisionTransformer`, the backbone SegViT builds (`pip install mmsegmentation==0.24.0` per its README),
written from the mmseg and mmcv files.

Follows:
- mmseg 0.24.1 as copied in Visual-Attention-Network/SegNeXt @ c87bcaef22ed2ad72ed3decb3727e5f879343516 :
  `mmseg/models/backbones/vit.py` (`TransformerEncoderLayer`, `VisionTransformer`: `_pos_embeding`,
  `resize_pos_embed`, `forward`), `mmseg/models/utils/embed.py` (`AdaptivePadding`, `PatchEmbed`).
- open-mmlab/mmcv @ a8073c74bf83d62ec36a103f835faa4837fb6585 : `mmcv/cnn/bricks/transformer.py` (`MultiheadAttention`,
  `FFN`; the same in the mmcv 1.4.4 that SegViT pins).
Same module names (`patch_embed.projection`, `cls_token`, `pos_embed`, `layers.{i}.ln1`, `.attn.attn` (a torch
`nn.MultiheadAttention`: `in_proj_weight`, `in_proj_bias`, `out_proj`), `.ln2`, `.ffn.layers.0.0`, `.ffn.layers.1`,
and `ln1` for the final norm) and forward. Quirks kept: "corner" padding of the image right / bottom to a multiple of
the patch; the position embedding is resampled (`interpolate_mode`, `align_corners=False`, the class slot kept) only
when the token count differs from the trained one; with `with_cls_token=False` the class token gets its position
embedding and is dropped before the first block; outputs are NCHW maps of the chosen blocks. Drop path is identity
(eval only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _pair(x):
    return (x, x) if isinstance(x, int) else tuple(x)


class AdaptivePadding(nn.Module):
    """Zero padding so that a `kernel_size` / `stride` conv covers the whole input ("corner": right and bottom)."""

    def __init__(self, kernel_size=1, stride=1, dilation=1, padding="corner"):
        super().__init__()
        assert padding in ("same", "corner")
        self.padding = padding
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)

    def get_pad_shape(self, input_shape):
        (in_h, in_w), (k_h, k_w), (s_h, s_w) = input_shape, self.kernel_size, self.stride
        out_h, out_w = math.ceil(in_h / s_h), math.ceil(in_w / s_w)
        pad_h = max((out_h - 1) * s_h + (k_h - 1) * self.dilation[0] + 1 - in_h, 0)
        pad_w = max((out_w - 1) * s_w + (k_w - 1) * self.dilation[1] + 1 - in_w, 0)
        return pad_h, pad_w

    def forward(self, x):
        pad_h, pad_w = self.get_pad_shape(x.size()[-2:])
        if pad_h > 0 or pad_w > 0:
            if self.padding == "corner":
                x = F.pad(x, [0, pad_w, 0, pad_h])
            else:
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return x


class PatchEmbed(nn.Module):
    """Conv patch embedding (`projection`) after adaptive padding; returns tokens (B, N, C) and the (h, w) grid."""

    def __init__(self, in_channels=3, embed_dims=768, kernel_size=16, stride=None, padding="corner", bias=True):
        super().__init__()
        stride = kernel_size if stride is None else stride
        self.adap_padding = AdaptivePadding(kernel_size, stride, 1, padding)
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride=stride, bias=bias)

    def forward(self, x):
        x = self.projection(self.adap_padding(x))
        out_size = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), out_size  # (B, C, h, w) -> (B, N, C)


class MultiheadAttention(nn.Module):
    """mmcv's wrapper: `identity + proj_drop(nn.MultiheadAttention(q, k, v))`, batch-first in and out."""

    def __init__(self, embed_dims, num_heads, attn_drop=0.0, proj_drop=0.0, batch_first=False, bias=True):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, attn_drop, bias=bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = nn.Identity()  # DropPath in training; identity in eval

    def forward(self, query, key=None, value=None, identity=None):
        key = query if key is None else key
        value = key if value is None else value
        identity = query if identity is None else identity
        if self.batch_first:  # (B, N, C) -> (N, B, C)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        out = self.attn(query=query, key=key, value=value)[0]
        if self.batch_first:
            out = out.transpose(0, 1)
        return identity + self.dropout_layer(self.proj_drop(out))


class FFN(nn.Module):
    """mmcv's FFN with two fcs: `layers = [[Linear, GELU, Dropout], Linear, Dropout]`, identity added."""

    def __init__(self, embed_dims=256, feedforward_channels=1024, ffn_drop=0.0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.GELU(), nn.Dropout(ffn_drop)),
            nn.Linear(feedforward_channels, embed_dims), nn.Dropout(ffn_drop))
        self.dropout_layer = nn.Identity()

    def forward(self, x, identity=None):
        return (x if identity is None else identity) + self.dropout_layer(self.layers(x))


class TransformerEncoderLayer(nn.Module):
    def __init__(self, embed_dims, num_heads, feedforward_channels, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.0, qkv_bias=True, norm_eps=1e-6):
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.attn = MultiheadAttention(embed_dims, num_heads, attn_drop=attn_drop_rate, proj_drop=drop_rate,
                                       batch_first=True, bias=qkv_bias)
        self.ln2 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.ffn = FFN(embed_dims, feedforward_channels, ffn_drop=drop_rate)

    @property
    def norm1(self):
        return self.ln1

    @property
    def norm2(self):
        return self.ln2

    def forward(self, x):
        x = self.attn(self.norm1(x), identity=x)
        return self.ffn(self.norm2(x), identity=x)


class VisionTransformer(nn.Module):
    """`norm_eps` stands for `norm_cfg=dict(type='LN', eps=...)` (SegViT's `backbone_norm_cfg` has eps 1e-6)."""

    layer_cls = TransformerEncoderLayer

    def __init__(self, img_size=224, patch_size=16, in_channels=3, embed_dims=768, num_layers=12, num_heads=12,
                 mlp_ratio=4, out_indices=-1, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 with_cls_token=True, output_cls_token=False, norm_eps=1e-6, patch_norm=False, final_norm=False,
                 interpolate_mode="bicubic"):
        super().__init__()
        assert not patch_norm and not output_cls_token, "not used by SegViT"
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        self.interpolate_mode = interpolate_mode
        self.patch_embed = PatchEmbed(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size,
                                      padding="corner")
        num_patches = (self.img_size[0] // patch_size) * (self.img_size[1] // patch_size)
        self.with_cls_token = with_cls_token
        self.output_cls_token = output_cls_token
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dims))
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        self.out_indices = [num_layers - 1 if out_indices == -1 else out_indices] if isinstance(
            out_indices, int) else list(out_indices)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, num_layers)]
        self.layers = nn.ModuleList([
            self.layer_cls(embed_dims, num_heads, mlp_ratio * embed_dims, drop_rate=drop_rate,
                           attn_drop_rate=attn_drop_rate, drop_path_rate=dpr[i], qkv_bias=qkv_bias, norm_eps=norm_eps)
            for i in range(num_layers)])
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = nn.LayerNorm(embed_dims, eps=norm_eps)

    @property
    def norm1(self):
        return self.ln1

    def _pos_embeding(self, patched_img, hw_shape, pos_embed):
        x_len, pos_len = patched_img.shape[1], pos_embed.shape[1]
        if x_len != pos_len:
            if pos_len == (self.img_size[0] // self.patch_size) * (self.img_size[1] // self.patch_size) + 1:
                pos_h, pos_w = self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size
            else:
                raise ValueError(f"Unexpected shape of pos_embed, got {pos_embed.shape}.")
            pos_embed = self.resize_pos_embed(pos_embed, hw_shape, (pos_h, pos_w), self.interpolate_mode)
        return self.drop_after_pos(patched_img + pos_embed)

    @staticmethod
    def resize_pos_embed(pos_embed, input_shpae, pos_shape, mode):
        pos_h, pos_w = pos_shape
        cls_token_weight = pos_embed[:, 0]
        pos_embed_weight = pos_embed[:, (-1 * pos_h * pos_w):]
        pos_embed_weight = pos_embed_weight.reshape(1, pos_h, pos_w, pos_embed.shape[2]).permute(0, 3, 1, 2)
        pos_embed_weight = F.interpolate(pos_embed_weight, size=input_shpae, mode=mode, align_corners=False)
        pos_embed_weight = torch.flatten(pos_embed_weight, 2).transpose(1, 2)
        return torch.cat((cls_token_weight.unsqueeze(1), pos_embed_weight), dim=1)

    def embed(self, inputs):
        """The first lines of `forward` (repeated by `vit_shrink.forward`): patch tokens, class token, position
        embedding, the class token dropped without `with_cls_token`; returns the tokens and the grid size."""
        x, hw_shape = self.patch_embed(inputs)
        x = torch.cat((self.cls_token.expand(inputs.shape[0], -1, -1), x), dim=1)
        x = self._pos_embeding(x, hw_shape, self.pos_embed)
        return (x if self.with_cls_token else x[:, 1:]), hw_shape

    def forward(self, inputs):
        b = inputs.shape[0]
        x, hw_shape = self.embed(inputs)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                out = x[:, 1:] if self.with_cls_token else x
                _, _, c = out.shape
                outs.append(out.reshape(b, hw_shape[0], hw_shape[1], c).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
