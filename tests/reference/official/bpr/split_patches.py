"""BPR's patch extraction (`tools/split_patches.py`), written from the repository's file, without the file I/O.

Follows chenhang98/BPR @ 9eafc3f1f6f6c4cfcdd0ceaf9f42bb2d07f90f4f : `tools/split_patches.py` (`find_float_boundary`,
`_force_move_back`, `get_dets`, `crop`, the box -> `hlist` / `wlist` bookkeeping of `save_details`, and `run_inst`
minus the image / GT loading and the PNG writing). Quirks kept: the boundary score is `min(|k - 9|, |k|) / 4.5` of a
zero-padded 3x3 all-ones conv of the mask (both sides of the contour; the image border counts as background); one
P x P box per boundary pixel in `np.where` (row-major) order, NMS at the given IoU, then the out-of-image boxes moved
back in the official order (a box moved from the right / bottom ends at W - 1 / H - 1); images with a side <= P
give no patches. NMS is `official.bpr.nms.nms` (mmcv's CPU op).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from official.bpr.nms import nms


def find_float_boundary(maskdt, width=3):
    maskdt = torch.Tensor(maskdt).unsqueeze(0).unsqueeze(0)
    boundary_finder = maskdt.new_ones((1, 1, width, width))
    boundary_mask = F.conv2d(maskdt.permute(1, 0, 2, 3), boundary_finder, stride=1,
                             padding=width // 2).permute(1, 0, 2, 3)
    bml = torch.abs(boundary_mask - width * width)
    bms = torch.abs(boundary_mask)
    fbmask = torch.min(bml, bms) / (width * width / 2)
    return fbmask[0, 0].numpy()


def _force_move_back(sdets, h, w, patch_size):
    sdets = sdets.copy()
    s = sdets[:, 0] < 0
    sdets[s, 0] = 0
    sdets[s, 2] = patch_size
    s = sdets[:, 1] < 0
    sdets[s, 1] = 0
    sdets[s, 3] = patch_size
    s = sdets[:, 2] >= w
    sdets[s, 0] = w - 1 - patch_size
    sdets[s, 2] = w - 1
    s = sdets[:, 3] >= h
    sdets[s, 1] = h - 1 - patch_size
    sdets[s, 3] = h - 1
    return sdets


def get_dets(maskdt, patch_size, iou_thresh=0.3):
    """(K, 5) boxes `x1, y1, x2, y2, score` kept by NMS (in NMS rank order) and moved into the image."""
    fbmask = find_float_boundary(maskdt)
    ys, xs = np.where(fbmask)
    scores = fbmask[ys, xs]
    dets = np.stack([xs - patch_size // 2, ys - patch_size // 2, xs + patch_size // 2, ys + patch_size // 2,
                     scores]).T
    # the `mmcv.ops.nms` branch (mmdet.ops is gone from current mmdet)
    _, inds = nms(np.ascontiguousarray(dets[:, :4], np.float32), np.ascontiguousarray(dets[:, 4], np.float32),
                  iou_thresh)
    sdets = dets[inds]
    h, w = maskdt.shape
    return _force_move_back(sdets, h, w, patch_size)


def crop(img, maskdt, maskgt, dets, padding):
    dets = dets.astype(int)[:, :4] + padding
    pd = padding
    img = np.pad(img, ((pd, pd), (pd, pd), (0, 0)))
    maskdt = np.pad(maskdt, pd)
    maskgt = np.pad(maskgt, pd)
    img_patches, dt_patches, gt_patches = [], [], []
    for x1, y1, x2, y2 in dets:
        img_patches.append(img[y1 - pd:y2 + pd, x1 - pd:x2 + pd, :])
        dt_patches.append(maskdt[y1 - pd:y2 + pd, x1 - pd:x2 + pd])
        gt_patches.append(maskgt[y1 - pd:y2 + pd, x1 - pd:x2 + pd])
    return img_patches, dt_patches, gt_patches


def details(dets):
    """`save_details`' bookkeeping: `hlist` [(y, h)], `wlist` [(x, w)] of the integer boxes."""
    dets = dets.astype(int)
    xs, ys = dets[:, 0], dets[:, 1]
    ws, hs = dets[:, 2] - dets[:, 0], dets[:, 3] - dets[:, 1]
    return list(zip(ys.tolist(), hs.tolist(), strict=True)), list(zip(xs.tolist(), ws.tolist(), strict=True))


def run_inst(img, maskdt, maskgt, patch_size=64, iou_thresh=0.25, padding=0):
    """One instance: (dets, image patches (h, w, 3), coarse mask patches, GT patches); None when the image is too
    small (the official code returns without writing anything)."""
    h, w, _ = img.shape
    if h <= patch_size or w <= patch_size:
        return None
    dets = get_dets(maskdt, patch_size, iou_thresh)
    return (dets, *crop(img, maskdt, maskgt, dets, padding))
