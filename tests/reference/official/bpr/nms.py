"""mmcv's non-maximum suppression (the CPU op that BPR's `split_patches.py` calls), written from the mmcv sources.

Follows open-mmlab/mmcv @ a8073c74bf83d62ec36a103f835faa4837fb6585 : `mmcv/ops/csrc/pytorch/cpu/nms.cpp` (`nms_cpu`)
and `mmcv/ops/nms.py` (`nms`: numpy in, numpy out, `offset=0`). Boxes are float32; area `(x2 - x1 + offset) *
(y2 - y1 + offset)`; the scores are sorted descending and a box is suppressed when its IoU with a kept box is
strictly above the threshold; the kept indices come in rank order. The one choice the op leaves open is the order
of equal scores (`Tensor.sort`, not guaranteed stable): here a stable sort, so ties keep the input order (the
`np.where` raster order in BPR).
"""

from __future__ import annotations

import numpy as np
import torch


def nms(boxes, scores, iou_threshold, offset=0):
    boxes_t, scores_t = torch.from_numpy(boxes), torch.from_numpy(scores)
    x1, y1, x2, y2 = (boxes_t[:, i].contiguous() for i in range(4))
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    order = torch.sort(scores_t, descending=True, stable=True).indices
    x1, y1, x2, y2, areas = (t.numpy() for t in (x1, y1, x2, y2, areas))
    order_np = order.numpy()
    select = np.ones(len(order_np), dtype=bool)
    threshold = np.float32(iou_threshold)
    for _i in range(len(order_np)):
        if not select[_i]:
            continue
        i = order_np[_i]
        rest = order_np[_i + 1:]
        alive = select[_i + 1:]
        j = rest[alive]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]) + offset)
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]) + offset)
        inter = (w * h).astype(np.float32)
        ovr = inter / (areas[i] + areas[j] - inter)
        suppressed = np.flatnonzero(alive)[ovr > threshold] + _i + 1
        select[suppressed] = False
    inds = order_np[select]
    return np.concatenate([boxes[inds], scores[inds][:, None]], axis=1), inds
