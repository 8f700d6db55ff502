"""The timm 0.3.x / 0.4.x layers that the official repositories copy into their own files or import from the timm they
pin, in one place.

Follows rwightman/pytorch-image-models (timm) @ 1d01c2b68c90619b173d4675d9a283be2bd44a33 (tag v0.3.3; AS-MLP and
SegFormer pin `timm==0.3.2`): `timm/models/vision_transformer.py` (`Mlp`) and `timm/models/layers/drop.py`
(`drop_path`, `DropPath`). Both are unchanged up to v0.4.12 (7096b52a613eefb4f6d8107366611c8983478b19, where `Mlp`
lives in `timm/models/layers/mlp.py`); timm 0.5 splits the MLP's dropout into `drop1` / `drop2`, and timm 1.x's
`drop_path` draws a Bernoulli mask and has `scale_by_keep`, so the installed timm is not the same code.

Who uses them:
- `Mlp` (fc1 -> act -> dropout -> fc2 -> dropout; keys `fc1`, `fc2`): copied verbatim as `Mlp` into the Swin
  segmentation and MaskFormer `swin.py`, CycleMLP's `cycle_mlp.py` and SETR's `vit.py` / `vit_mla.py`. Not the `Mlp`s
  of SegFormer and SegNeXt (depth-wise conv inside), AS-MLP (1x1 convs) or Segmenter (`FeedForward`).
- `DropPath`: imported from timm by SegFormer and AS-MLP (both pin `timm==0.3.2`) and AS-MLP-Semantic-Segmentation;
  copied into SETR's `vit.py`; mmcv's `mmcv/cnn/bricks/drop.py` (SegNeXt) is the same function (its `DropPath`
  defaults to `drop_prob=0.1`, which the callers always give). The trees that import timm's own `DropPath` keep it:
  MaskFormer, CycleMLP, Segmenter, and the Swin segmentation tree, whose classes MaskFormer's `swin.py` shares (both
  repositories import it from an unpinned `timm`). Identity in eval, the only mode the comparisons run.
The repositories' `to_2tuple` / `trunc_normal_` serve weight initialisation and argument parsing, which the trees
leave out, so they are not reproduced.
"""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x, drop_prob: float = 0.0, training: bool = False):
    """Per-sample stochastic depth: keep a sample with probability 1 - `drop_prob` and scale it by 1 / (1 - p)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # work with diff dim tensors, not just 2D ConvNets
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    random_tensor.floor_()  # binarize
    return x.div(keep_prob) * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob=None):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
