"""The detectron2 building blocks MaskFormer uses, written from the detectron2 files.

Follows facebookresearch/detectron2 @ 02b5c4e295e990042a714712c21dc79b731e8833 : `detectron2/layers/wrappers.py`
(`Conv2d`: a conv with optional `norm` and `activation` children applied after it), `detectron2/layers/batch_norm.py`
(`FrozenBatchNorm2d`: buffers `weight`, `bias`, `running_mean`, `running_var`, eps 1e-5, no batch counter; `get_norm`:
"GN" is `GroupNorm(32, C)`, "FrozenBN" / "BN"), `detectron2/structures/image_list.py` (`ImageList.from_tensors`:
zero padding right / bottom to a multiple of `size_divisibility`), `detectron2/modeling/postprocessing.py`
(`sem_seg_postprocess`: crop to the image, bilinear resize to the output size, `align_corners=False`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


def get_norm(norm, out_channels):
    if norm is None or norm == "":
        return None
    return {"BN": nn.BatchNorm2d, "FrozenBN": FrozenBatchNorm2d,
            "GN": lambda channels: nn.GroupNorm(32, channels)}[norm](out_channels)


class Conv2d(nn.Conv2d):
    def __init__(self, *args, norm=None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x):
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def pad_to_divisibility(tensors, size_divisibility=0, pad_value=0.0):
    """`ImageList.from_tensors` for a list of (C, H, W) images: (padded batch, original (h, w) of each)."""
    image_sizes = [(t.shape[-2], t.shape[-1]) for t in tensors]
    max_h, max_w = max(s[0] for s in image_sizes), max(s[1] for s in image_sizes)
    if size_divisibility > 1:
        stride = size_divisibility
        max_h, max_w = (max_h + stride - 1) // stride * stride, (max_w + stride - 1) // stride * stride
    batched = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], max_h, max_w), pad_value)
    for img, pad_img in zip(tensors, batched, strict=True):
        pad_img[..., : img.shape[-2], : img.shape[-1]].copy_(img)
    return batched, image_sizes


def sem_seg_postprocess(result, img_size, output_height, output_width):
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]
