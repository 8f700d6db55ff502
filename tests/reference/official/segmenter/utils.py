"""Helpers of the official Segmenter code, written from the official file.

Follows rstrudel/segmenter @ 20d1bfad354165ee45c3f65972a4d9c131f58d53 : `segm/model/utils.py` (`resize_pos_embed`,
`padding`, `unpadding`). Quirks kept: the position-embedding grid is resampled **bilinearly** (`F.interpolate`
default `align_corners=None`, i.e. False), the extra tokens kept as they are; images are zero-padded right / bottom to
a multiple of the patch and the output cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_pos_embed(posemb, grid_old_shape, grid_new_shape, num_extra_tokens):
    posemb_tok, posemb_grid = posemb[:, :num_extra_tokens], posemb[0, num_extra_tokens:]
    if grid_old_shape is None:
        gs_old_h = gs_old_w = int(math.sqrt(len(posemb_grid)))
    else:
        gs_old_h, gs_old_w = grid_old_shape
    gs_h, gs_w = grid_new_shape
    posemb_grid = posemb_grid.reshape(1, gs_old_h, gs_old_w, -1).permute(0, 3, 1, 2)  # (1, C, h, w)
    posemb_grid = F.interpolate(posemb_grid, size=(gs_h, gs_w), mode="bilinear")
    posemb_grid = posemb_grid.permute(0, 2, 3, 1).reshape(1, gs_h * gs_w, -1)
    return torch.cat([posemb_tok, posemb_grid], dim=1)


def padding(im, patch_size, fill_value=0):
    h, w = im.size(2), im.size(3)
    pad_h = patch_size - h % patch_size if h % patch_size > 0 else 0
    pad_w = patch_size - w % patch_size if w % patch_size > 0 else 0
    if pad_h > 0 or pad_w > 0:
        im = F.pad(im, (0, pad_w, 0, pad_h), value=fill_value)
    return im


def unpadding(y, target_size):
    h, w = target_size
    extra_h, extra_w = y.size(2) - h, y.size(3) - w
    if extra_h > 0:
        y = y[:, :, :-extra_h]
    if extra_w > 0:
        y = y[:, :, :, :-extra_w]
    return y
