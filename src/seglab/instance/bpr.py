"""BPR, Boundary Patch Refinement: refine coarse instance masks by re-segmenting small patches along their boundaries.

Paper: "Look Closer to Segment Better: Boundary Patch Refinement for Instance Segmentation", Tang et al., CVPR 2021,
arXiv:2104.05239. Official code: chenhang98/BPR (formerly tinyalpha/BPR; mmseg based). Written for seglab from the
facts of that code (design/models.md §5):

1. Boundary pixels: per instance, a 3x3 all-ones box filter with zero padding counts the foreground pixels k around
   every pixel; the score is `min(k, 9 - k) / 4.5` and every pixel with a mixed window is a boundary pixel (both
   sides of the contour, and foreground pixels on the image border, since the padding counts as background).
2. Proposals: one P x P box `[x - P/2, y - P/2, x + P/2, y + P/2]` per boundary pixel scored by that score, greedy NMS
   on box IoU (0.55 at Cityscapes inference, 0.25 when building patch datasets; found locally on a grid), then boxes
   leaving the image are moved back in (the official rule, which ends a moved box at W - 1 / H - 1).
3. Patches: exact P x P crops of the image and the mask, resized to the network size (image bilinear, mask nearest).
4. Network: HRNetV2 (W18-Small at 128, W48 at 256) whose stem adds a stride-2 3x3 conv of the mask (in {-1, +1}) to
   the output of the image's first conv; FCN resize-concat head with 2 classes.
5. Pasting: logits resized to the network size, then to P, softmaxed; foreground probabilities are averaged where
   patches of one instance overlap and thresholded at 0.5 (strict) inside the covered region; outside, the coarse
   mask is kept.

Module names are seglab's: `backbone` (seglab HRNet), `conv_mask` (official `backbone.conv_mask`), `decode_head`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from seglab.models.bpr import BPR_VARIANTS, BPRNet, BPRVariant, build_bpr  # noqa: F401  (the network, re-exported)

PATCH_SIZE = 64  # patch side in image pixels (the only value in the released scripts)
NMS_IOU_INFERENCE = 0.55  # Cityscapes inference (`tools/inference.sh`); COCO inference uses 0.25
NMS_IOU_DATASET = 0.25  # building training / validation patch sets (`split_patches.py`, `prepare_dataset.sh`)
DATASET_MASK_IOU = 0.5  # coarse instances kept for training only if max IoU with a same-class GT > 0.5 (`filter.py`)
THRESHOLD = 0.5  # averaged foreground probability must exceed this (strict) to be foreground
# ImageNet statistics on 0-255 RGB (`img_norm_cfg` of the official configs, to_rgb=True)
IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)
TIMING_KEYS = ("extract", "network", "paste")


# ----------------------------------------------------------------------------------------------------------------
# 1-2. Boundary pixels and patch proposals


def _check_masks(masks: torch.Tensor) -> None:
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")


def boundary_scores(masks: torch.Tensor) -> torch.Tensor:
    """The official "float boundary" `min(k, 9 - k) / 4.5` of (N, H, W) binary masks (k: foreground count of the
    zero-padded 3x3 window); > 0 exactly on boundary pixels, at most 4 / 4.5."""
    _check_masks(masks)
    m = masks.to(torch.float32).unsqueeze(1)
    # count_include_pad: the zero padding counts as background, as in the official conv with padding 1
    k = torch.round(F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=True) * 9).squeeze(1)
    return torch.minimum(k, 9 - k) / 4.5


def boundary_pixels(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: pixels whose zero-padded 3x3 window holds both foreground and background (max/min pooling)."""
    _check_masks(masks)
    m = F.pad(masks.to(torch.float32).unsqueeze(1), (1, 1, 1, 1))  # zero padding = background outside the image
    high = F.max_pool2d(m, 3, stride=1)
    low = -F.max_pool2d(-m, 3, stride=1)
    return (high != low).squeeze(1)


def _instance_boundary(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boundary pixel coordinates (ys, xs, raster order) and scores of one (H, W) mask, equal to `boundary_scores`
    but computed on the instance's bounding box grown by one pixel (the 3x3 window never reaches further), with
    byte-wide separable 3-sums, so the cost follows the instance, not the image."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    empty = mask.new_zeros(0, dtype=torch.long)
    if rows.numel() == 0:
        return empty, empty, mask.new_zeros(0, dtype=torch.float32)
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    h, w = mask.shape
    y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h)
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)
    # inside the image the grown margin holds real background; at the image border the zero padding stands for
    # outside, exactly as the official conv's padding
    m = F.pad(mask[y0:y1, x0:x1].to(torch.uint8), (1, 1, 1, 1))
    row_sum = m[:, :-2] + m[:, 1:-1] + m[:, 2:]
    k = row_sum[:-2] + row_sum[1:-1] + row_sum[2:]  # foreground count of each 3x3 window, 0..9
    ys, xs = torch.nonzero((k > 0) & (k < 9), as_tuple=True)  # row-major: the official np.where order
    count = k[ys, xs].to(torch.float32)
    return ys + y0, xs + x0, torch.minimum(count, 9 - count) / 4.5


def _nms_points(
    ys: torch.Tensor, xs: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, patch_size: int, nms_iou: float
) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, per group, for P x P boxes centred on the points, in rank order.

    Scores take a handful of values, so the order among ties decides which boxes survive; the official op sorts
    unstably (implementation-dependent). Here the order is fixed: score descending, then the given (raster) order.

    The result is exactly that of `torchvision.ops.batched_nms` on these boxes (IoU in float32 with area
    (x2 - x1) * (y2 - y1), suppressed when strictly above `nms_iou`; tested), but found locally: two P x P boxes
    overlap only if their centres are less than P apart on both axes, so the points are bucketed in a P-cell grid
    and each kept box is compared only with the later points of the 3 x 3 cells around it. The cost is
    O(n log n + kept * local density) instead of torchvision's O(n * kept) per instance, which grows almost as
    n^2 along long contours.
    """
    n = ys.numel()
    device = ys.device
    if n == 0:
        return ys.new_zeros(0, dtype=torch.long)
    order = torch.sort(scores, descending=True, stable=True).indices.cpu().numpy()
    x = xs.cpu().numpy().astype(np.int64)
    y = ys.cpu().numpy().astype(np.int64)
    g = groups.cpu().numpy().astype(np.int64)
    p = int(patch_size)
    # cells padded by one on every side, so the 3-cell span of a row never reaches into another row or group
    cx, cy = x // p + 1, y // p + 1
    ncx, ncy = int(cx.max()) + 2, int(cy.max()) + 2
    cell = (g * ncy + cy) * ncx + cx
    by_cell = np.argsort(cell, kind="stable")
    sorted_cell = cell[by_cell]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    suppressed = np.zeros(n, dtype=bool)  # by rank
    box_area = np.float32(p * p)
    threshold = np.float64(nms_iou)
    kept = []
    pos = 0
    while pos < n:
        if suppressed[pos]:  # jump to the next unsuppressed rank, scanning in blocks
            block = suppressed[pos : pos + 1024]
            free = np.flatnonzero(~block)
            if free.size == 0:
                pos += block.size
                continue
            pos += int(free[0])
        i = order[pos]
        kept.append(i)
        c = cell[i]
        starts = np.searchsorted(sorted_cell, (c - ncx - 1, c - 1, c + ncx - 1), side="left")
        ends = np.searchsorted(sorted_cell, (c - ncx + 1, c + 1, c + ncx + 1), side="right")
        near = np.concatenate([by_cell[s:e] for s, e in zip(starts, ends, strict=True)])
        near = near[rank[near] > pos]
        inter = (np.maximum(p - np.abs(x[near] - x[i]), 0) * np.maximum(p - np.abs(y[near] - y[i]), 0)).astype(
            np.float32
        )
        iou = inter / (box_area + box_area - inter)  # float32, as torchvision's kernel
        suppressed[rank[near[iou.astype(np.float64) > threshold]]] = True
        pos += 1
    return torch.as_tensor(np.asarray(kept, dtype=np.int64), device=device)


def _move_back(boxes: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """The official order of fixes for boxes leaving the image (note: a box moved from the right / bottom ends at
    W - 1 / H - 1, so it never covers the last column / row)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    p = patch_size
    s = x1 < 0
    x1, x2 = torch.where(s, 0, x1), torch.where(s, p, x2)
    s = y1 < 0
    y1, y2 = torch.where(s, 0, y1), torch.where(s, p, y2)
    s = x2 >= width
    x1, x2 = torch.where(s, width - 1 - p, x1), torch.where(s, width - 1, x2)
    s = y2 >= height
    y1, y2 = torch.where(s, height - 1 - p, y1), torch.where(s, height - 1, y2)
    return torch.stack([x1, y1, x2, y2], dim=1)


def propose_patches(
    masks: torch.Tensor, patch_size: int = PATCH_SIZE, nms_iou: float = NMS_IOU_INFERENCE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch boxes along the boundaries of (N, H, W) masks.

    Returns `boxes` (K, 4) long `x1, y1, x2, y2` (every box P x P and inside the image) and `instance` (K,) the
    mask each box belongs to, ordered by instance, then by NMS rank. Images with H <= P or W <= P give no boxes (the
    official code skips them).
    """
    _check_masks(masks)
    n, height, width = masks.shape
    device = masks.device
    if patch_size % 2:
        raise ValueError(f"patch_size must be even (boxes are centred as x -/+ P/2), got {patch_size}")
    if n == 0 or height <= patch_size or width <= patch_size:
        return torch.zeros(0, 4, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.long, device=device)
    parts = [_instance_boundary(masks[i].bool()) for i in range(n)]
    ys = torch.cat([p[0] for p in parts])
    xs = torch.cat([p[1] for p in parts])
    scores = torch.cat([p[2] for p in parts])
    groups = torch.cat([torch.full_like(p[0], i) for i, p in enumerate(parts)])
    keep = _nms_points(ys, xs, scores, groups, patch_size, nms_iou)
    keep = keep[torch.sort(groups[keep], stable=True).indices]  # group by instance, NMS rank within
    half = patch_size // 2
    boxes = torch.stack([xs[keep] - half, ys[keep] - half, xs[keep] + half, ys[keep] + half], dim=1)
    return _move_back(boxes, height, width, patch_size), groups[keep]


# ----------------------------------------------------------------------------------------------------------------
# 3. Patch extraction


def _patch_index(boxes: torch.Tensor, patch_size: int, width: int) -> torch.Tensor:
    """(K, P, P) flat pixel indices `y * W + x` of the crops `[y1:y1+P, x1:x1+P]`."""
    offsets = torch.arange(patch_size, device=boxes.device)
    rows = boxes[:, 1, None] + offsets  # (K, P)
    cols = boxes[:, 0, None] + offsets
    return rows[:, :, None] * width + cols[:, None, :]


def crop_patches(image: torch.Tensor, boxes: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Exact P x P crops `image[:, y1:y1+P, x1:x1+P]` of a (C, H, W) tensor: (K, C, P, P)."""
    c, _, width = image.shape
    index = _patch_index(boxes, patch_size, width).flatten()
    return image.reshape(c, -1)[:, index].reshape(c, boxes.shape[0], patch_size, patch_size).transpose(0, 1)


def crop_mask_patches(
    masks: torch.Tensor, boxes: torch.Tensor, instance: torch.Tensor, patch_size: int
) -> torch.Tensor:
    """Exact P x P crops of the mask each box belongs to: (K, P, P), dtype of `masks`."""
    _, height, width = masks.shape
    index = _patch_index(boxes, patch_size, width) + (instance * height * width)[:, None, None]
    return masks.reshape(-1)[index]


def resize_patches(
    image_patches: torch.Tensor, mask_patches: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs: images bilinearly resized (cv2 / `align_corners=False` sampling), masks nearest-resized and
    mapped from {0, 1} to {-1, +1} as `(m - 0.5) / 0.5`; (K, 3, S, S) and (K, 1, S, S)."""
    img = F.interpolate(image_patches, size=(size, size), mode="bilinear", align_corners=False)
    m = F.interpolate(mask_patches[:, None].to(img.dtype), size=(size, size), mode="nearest")
    return img, (m - 0.5) / 0.5


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in 0-255 (uint8 or float) to the network's input: ImageNet mean / std of the official configs."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W) RGB, got shape {tuple(image.shape)}")
    mean = torch.tensor(IMAGE_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=image.device).view(3, 1, 1)
    return (image.to(torch.float32) - mean) / std


# ----------------------------------------------------------------------------------------------------------------
# 4. The refinement network


# ----------------------------------------------------------------------------------------------------------------
# 5-6. Reassembly and the refine API


def paste_patches(
    masks: torch.Tensor, probs: torch.Tensor, boxes: torch.Tensor, instance: torch.Tensor, threshold: float = THRESHOLD
) -> torch.Tensor:
    """Averages the P x P foreground probabilities `probs` (K, P, P) per instance where patches overlap and writes
    `mean > threshold` into a copy of `masks` (N, H, W) inside the covered pixels; other pixels keep the coarse mask.

    Sums and counts are accumulated with `index_add_` on one canvas per instance, restricted to the bounding box of
    its patches so that memory follows the patches rather than N x H x W."""
    out = masks.clone()
    if boxes.numel() == 0:
        return out
    n, height, width = masks.shape
    p = probs.shape[-1]
    offsets = torch.arange(p, device=boxes.device)
    for i in torch.unique(instance).tolist():
        sel = instance == i
        b = boxes[sel]
        x0, y0 = int(b[:, 0].min()), int(b[:, 1].min())
        x1, y1 = int(b[:, 2].max()), int(b[:, 3].max())
        cw = x1 - x0
        rows = (b[:, 1, None] - y0 + offsets)[:, :, None]
        cols = (b[:, 0, None] - x0 + offsets)[:, None, :]
        index = (rows * cw + cols).flatten()
        total = torch.zeros((y1 - y0) * cw, dtype=torch.float32, device=probs.device)
        count = torch.zeros_like(total)
        total.index_add_(0, index, probs[sel].reshape(-1).to(torch.float32))
        count.index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
        total, count = total.view(y1 - y0, cw), count.view(y1 - y0, cw)
        covered = count > 0
        region = out[i, y0:y1, x0:x1]
        refined = (total / count.clamp(min=1)) > threshold
        region[covered] = refined[covered].to(out.dtype)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def refine(
    image: torch.Tensor,
    masks: torch.Tensor,
    model: nn.Module,
    patch_size: int = PATCH_SIZE,
    nms_iou: float = NMS_IOU_INFERENCE,
    batch: int = 64,
    input_size: int | None = None,
    timings: dict[str, float] | None = None,
) -> torch.Tensor:
    """Refines coarse instance masks with a BPR network.

    Args:
        image: (3, H, W) float, normalised as the network expects (see `normalize_image`).
        masks: (N, H, W) bool coarse masks.
        model: `model(image_patches, mask_patches) -> logits (B, 2, h, w)` (e.g. `BPRNet`); run in eval mode.
        patch_size: patch side P in image pixels.
        nms_iou: IoU threshold of the patch NMS (0.55 Cityscapes, 0.25 COCO).
        batch: patches per network call.
        input_size: network input side; default `model.input_size`.
        timings: if given, receives the seconds spent in `extract` (boundaries, proposals, crops), `network`
            (resizes, forward, softmax) and `paste`, added to any values already there.

    Returns:
        (N, H, W) bool refined masks; pixels outside every patch keep their coarse value.
    """
    _check_masks(masks)
    if image.dim() != 3 or image.shape[0] != 3 or image.shape[1:] != masks.shape[1:]:
        raise ValueError(f"image must be (3, H, W) matching masks (N, H, W), got {tuple(image.shape)} and "
                         f"{tuple(masks.shape)}")
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    if size is None:
        raise ValueError("input_size is required when the model has no `input_size` attribute")
    masks = masks.bool()
    clock = timings is not None
    if clock:
        _sync(image.device)
    t0 = time.perf_counter()
    boxes, instance = propose_patches(masks, patch_size, nms_iou)
    img_patches = crop_patches(image, boxes, patch_size)
    mask_patches = crop_mask_patches(masks, boxes, instance, patch_size)
    if clock:
        _sync(image.device)
    t1 = time.perf_counter()
    was_training = model.training
    model.eval()
    probs = []
    try:
        for start in range(0, boxes.shape[0], batch):
            img, m = resize_patches(img_patches[start:start + batch], mask_patches[start:start + batch], size)
            logits = model(img, m)
            # the official inference: to the input size, then back to the patch size, then softmax
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
            logits = F.interpolate(logits, size=(patch_size, patch_size), mode="bilinear", align_corners=False)
            probs.append(logits.softmax(dim=1)[:, 1])
    finally:
        model.train(was_training)
    probs_t = torch.cat(probs) if probs else image.new_zeros(0, patch_size, patch_size)
    if clock:
        _sync(image.device)
    t2 = time.perf_counter()
    out = paste_patches(masks, probs_t, boxes, instance)
    if clock:
        _sync(image.device)
        t3 = time.perf_counter()
        for key, dt in zip(TIMING_KEYS, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            timings[key] = timings.get(key, 0.0) + dt
    return out


# ----------------------------------------------------------------------------------------------------------------
# 7. Training data and the training step


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) IoU between (N, H, W) and (M, H, W) binary masks (0 where the union is empty)."""
    fa = a.reshape(a.shape[0], -1).to(torch.float32)
    fb = b.reshape(b.shape[0], -1).to(torch.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


@dataclass
class PatchSet:
    """Training triples at patch resolution: `images` (K, 3, P, P) float (normalised), `coarse` and `target`
    (K, P, P) uint8 in {0, 1}."""

    images: torch.Tensor
    coarse: torch.Tensor
    target: torch.Tensor


def extract_training_patches(
    image: torch.Tensor,
    coarse_masks: torch.Tensor,
    coarse_labels: torch.Tensor,
    gt_masks: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_crowd: torch.Tensor | None = None,
    patch_size: int = PATCH_SIZE,
    nms_iou: float = NMS_IOU_DATASET,
    min_iou: float = DATASET_MASK_IOU,
) -> PatchSet:
    """The official patch sampling for one image (`filter.py` then `split_patches.py`).

    A coarse instance is used only if its best IoU with a non-crowd GT instance of the same class is > `min_iou`;
    its target is that max-IoU GT mask. Every NMS-kept boundary patch (NMS `nms_iou`, default 0.25) of a used
    instance gives one triple (image patch, coarse mask patch, GT mask patch).
    """
    _check_masks(coarse_masks)
    _check_masks(gt_masks)
    if coarse_masks.shape[1:] != gt_masks.shape[1:] or image.shape[1:] != coarse_masks.shape[1:]:
        raise ValueError(f"image {tuple(image.shape)}, coarse masks {tuple(coarse_masks.shape)} and GT masks "
                         f"{tuple(gt_masks.shape)} must share H, W")
    p = patch_size
    empty = PatchSet(image.new_zeros(0, 3, p, p), torch.zeros(0, p, p, dtype=torch.uint8),
                     torch.zeros(0, p, p, dtype=torch.uint8))
    if coarse_masks.shape[0] == 0 or gt_masks.shape[0] == 0:
        return empty
    iou = mask_iou(coarse_masks.bool(), gt_masks.bool())
    valid = coarse_labels[:, None] == gt_labels[None, :]
    if gt_crowd is not None:
        valid &= ~gt_crowd.bool()[None, :]
    iou = torch.where(valid, iou, torch.full_like(iou, -1.0))
    best, match = iou.max(dim=1)
    used = best > min_iou
    if not bool(used.any()):
        return empty
    coarse = coarse_masks[used].to(torch.uint8)
    target = gt_masks[match[used]].to(torch.uint8)
    boxes, instance = propose_patches(coarse.bool(), p, nms_iou)
    return PatchSet(
        crop_patches(image, boxes, p),
        crop_mask_patches(coarse, boxes, instance, p),
        crop_mask_patches(target, boxes, instance, p),
    )


def concat_patch_sets(sets: Sequence[PatchSet]) -> PatchSet:
    """One PatchSet from several (e.g. one per image)."""
    if not sets:
        raise ValueError("concat_patch_sets needs at least one PatchSet")
    return PatchSet(torch.cat([s.images for s in sets]), torch.cat([s.coarse for s in sets]),
                    torch.cat([s.target for s in sets]))


class PatchDataset(Dataset):
    """Network-ready training samples from a PatchSet: `(image (3, S, S), mask (1, S, S) in {-1, +1},
    target (S, S) long)`; images bilinearly, masks nearest-resized (the official training pipeline resizes to the
    crop size). With `flip`, a random horizontal flip with probability 0.5 (the official `RandomFlip`); the
    official `PhotoMetricDistortion` on uint8 images is not reproduced here.

    Args:
        patches: the triples.
        input_size: network input side S.
        flip: random horizontal flips.
        generator: random source of the flips.
    """

    def __init__(self, patches: PatchSet, input_size: int = 128, flip: bool = False,
                 generator: torch.Generator | None = None) -> None:
        self.patches = patches
        self.input_size = input_size
        self.flip = flip
        self.generator = generator

    def __len__(self) -> int:
        return self.patches.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.patches
        img, mask = resize_patches(s.images[index:index + 1], s.coarse[index:index + 1], self.input_size)
        target = F.interpolate(s.target[index:index + 1, None].float(), size=mask.shape[-2:], mode="nearest")
        img, mask, target = img[0], mask[0], target[0, 0].long()
        if self.flip and torch.rand((), generator=self.generator) < 0.5:
            img, mask, target = img.flip(-1), mask.flip(-1), target.flip(-1)
        return img, mask, target


def bpr_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain 2-class cross-entropy on logits bilinearly resized to the target size (mmseg's decode-head loss)."""
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, target)


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> float:
    """One optimisation step on a batch `(images, masks, targets)` from `PatchDataset`; returns the loss."""
    images, masks, targets = batch
    model.train()
    loss = bpr_loss(model(images, masks), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
