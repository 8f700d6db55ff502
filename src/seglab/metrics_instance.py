"""Instance-segmentation metrics: COCO AP for masks and boxes, and the boundary quality that refinement improves.

- `coco_evaluate` runs pycocotools' `COCOeval` and reports AP (mean over IoU thresholds 0.50:0.05:0.95), AP50,
  AP75 and APs / APm / APl (objects below 32², between 32² and 96², above 96² pixels of area), all at 100
  detections per image, as fractions in [0, 1], for each requested IoU type: `segm` (mask IoU), `bbox` (box IoU)
  and `boundary` (Boundary AP).
- `boundary_iou` is Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
  Evaluation", CVPR 2021): the IoU of the two masks' inner boundary bands. The band of a mask is its pixels within
  distance d of the background (the mask minus its erosion by a (2d+1)² square, the image border counting as
  background), d = round(dilation_ratio x image diagonal), at least 1 px, as in the reference code. A prediction
  wrong only along the object's outline loses little mask IoU on a large object but much boundary IoU.
- Boundary AP is COCO's mask AP with the matching IoU of a (prediction, non-crowd ground truth) pair replaced by
  min(mask IoU, boundary IoU); crowd regions keep the mask IoU. This is what the reference boundary-iou-api
  (bowenc0221/boundary-iou-api, `iouType="boundary"`) computes; here it is `COCOeval` with `computeIoU`
  overridden (`BoundaryCOCOeval`), so matching, area ranges and the precision/recall integration are pycocotools'
  own.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

AP_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES: tuple[str, ...] = ("segm", "bbox", "boundary")
_EROSION_CHUNK = 16  # masks eroded at once: bounds the int32 buffers of the running sums on large images


# ---------------------------------------------------------------------------------------------------- boundary IoU
def boundary_dilation(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """The band width d in pixels: round(dilation_ratio x image diagonal), at least 1 (the reference's rule)."""
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def _near_background(masks: torch.Tensor, d: int) -> torch.Tensor:
    """For (N, h, w) bool masks: whether a background pixel lies within Chebyshev distance d (outside = background).

    Counts background pixels in every (2d+1)² window with two running-sum passes (rows, then columns), so the
    cost per pixel does not depend on d.
    """

    def window_sums(x: torch.Tensor, dim: int) -> torch.Tensor:
        length = x.shape[dim] - 2 * d
        running = torch.cumsum(x, dim)
        running = torch.cat([torch.zeros_like(running.narrow(dim, 0, 1)), running], dim)
        return running.narrow(dim, 2 * d + 1, length) - running.narrow(dim, 0, length)

    near = []
    for chunk in masks.split(_EROSION_CHUNK):
        background = F.pad((~chunk).to(torch.int32), (d, d, d, d), value=1)
        near.append(window_sums(window_sums(background, 2), 1) > 0)
    return torch.cat(near)


def mask_to_boundary(masks: torch.Tensor | np.ndarray, dilation_ratio: float = 0.02) -> torch.Tensor:
    """The inner boundary band of binary masks of shape (..., H, W), as a bool tensor of the same shape.

    The band is the mask minus its erosion by a (2d+1) x (2d+1) square (d from `boundary_dilation`, computed from
    the full H, W), the image border counting as background, so a mask cut by the border has a boundary there
    too. Only the masks' joint bounding box widened by d is processed: farther pixels cannot be in any band.
    """
    m = torch.as_tensor(masks).bool()
    if m.dim() < 2:
        raise ValueError(f"masks must have shape (..., H, W), got {tuple(m.shape)}")
    height, width = m.shape[-2:]
    d = boundary_dilation(height, width, dilation_ratio)
    flat = m.reshape(-1, height, width)
    band = torch.zeros_like(flat)
    rows, cols = torch.nonzero(flat.any(dim=(0, 2))), torch.nonzero(flat.any(dim=(0, 1)))
    if len(rows) == 0:
        return band.reshape(m.shape)
    # a crop edge that is not the image border lies more than d from every mask pixel, so treating what is
    # beyond it as background changes nothing
    y0, y1 = max(int(rows[0]) - d, 0), min(int(rows[-1]) + d + 1, height)
    x0, x1 = max(int(cols[0]) - d, 0), min(int(cols[-1]) + d + 1, width)
    crop = flat[:, y0:y1, x0:x1]
    band[:, y0:y1, x0:x1] = crop & _near_background(crop, d)
    return band.reshape(m.shape)


def boundary_iou(
    gt_mask: torch.Tensor | np.ndarray, pred_mask: torch.Tensor | np.ndarray, dilation_ratio: float = 0.02
) -> torch.Tensor:
    """Boundary IoU of ground-truth and predicted binary masks: |G_b ∩ P_b| / |G_b ∪ P_b| over their bands.

    Args:
        gt_mask: (H, W) or (N, H, W) binary masks.
        pred_mask: the same shape (or broadcastable to it); pairs are compared element-wise along N.
        dilation_ratio: band width as a fraction of the image diagonal (0.02, the paper's value for COCO).

    Returns:
        A float tensor of the batch shape (a scalar for single masks). Two empty masks have no boundary and
        score 1 (they agree).
    """
    gt, pred = torch.broadcast_tensors(torch.as_tensor(gt_mask).bool(), torch.as_tensor(pred_mask).bool())
    gt_band, pred_band = mask_to_boundary(gt, dilation_ratio), mask_to_boundary(pred, dilation_ratio)
    intersection = (gt_band & pred_band).flatten(-2).sum(-1)
    union = (gt_band | pred_band).flatten(-2).sum(-1)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union, dtype=torch.float32))


def mask_iou(gt_mask: torch.Tensor | np.ndarray, pred_mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Plain mask IoU of binary masks of shape (..., H, W), element-wise; two empty masks score 1."""
    gt, pred = torch.broadcast_tensors(torch.as_tensor(gt_mask).bool(), torch.as_tensor(pred_mask).bool())
    intersection = (gt & pred).flatten(-2).sum(-1)
    union = (gt | pred).flatten(-2).sum(-1)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union, dtype=torch.float32))


def _boundary_rles(rles: list[dict[str, Any]], dilation_ratio: float) -> list[dict[str, Any]]:
    """The boundary bands of RLE masks (all the same image size), as RLEs."""
    if not rles:
        return []
    masks = torch.from_numpy(mask_utils.decode(rles)).permute(2, 0, 1)  # (H, W, N) -> (N, H, W)
    # one mask at a time, so each is cropped to its own box (instances are small next to the image)
    bands = torch.stack([mask_to_boundary(m, dilation_ratio) for m in masks], dim=2).numpy().astype(np.uint8)
    return mask_utils.encode(np.asfortranarray(bands))


# ---------------------------------------------------------------------------------------------------- COCO AP
class BoundaryCOCOeval(COCOeval):
    """`COCOeval` for Boundary AP: mask AP with IoU = min(mask IoU, boundary IoU) for non-crowd ground truth.

    Only `computeIoU` differs from pycocotools' segm evaluation (which it otherwise is: `iouType` stays "segm",
    so ground truth and detections are prepared as RLEs); crowd ground truth keeps the plain mask IoU, as in the
    reference boundary-iou-api.
    """

    def __init__(self, coco_gt: COCO, coco_dt: COCO, dilation_ratio: float = 0.02) -> None:
        super().__init__(coco_gt, coco_dt, iouType="segm")
        self.dilation_ratio = dilation_ratio

    def computeIoU(self, imgId: Any, catId: Any) -> Any:  # pycocotools' method name
        p = self.params
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if not gt or not dt:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        g = [o["segmentation"] for o in gt]
        d = [o["segmentation"] for o in dt]
        iscrowd = [int(o["iscrowd"]) for o in gt]
        ious = np.asarray(mask_utils.iou(d, g, iscrowd))
        boundary = np.asarray(mask_utils.iou(_boundary_rles(d, self.dilation_ratio),
                                             _boundary_rles(g, self.dilation_ratio), iscrowd))
        plain = np.asarray(iscrowd, bool)
        ious[:, ~plain] = np.minimum(ious[:, ~plain], boundary[:, ~plain])
        return ious


def _quiet(verbose: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _load_gt(gt: str | Path | dict[str, Any], verbose: bool) -> COCO:
    if isinstance(gt, (str, Path)):
        where = str(gt)
        try:
            data = json.loads(Path(gt).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"ground-truth file {gt} does not exist") from None
    else:
        where, data = "the ground-truth dict", copy.deepcopy(gt)  # COCOeval rewrites segmentations in place
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{where} has no {key!r} list (COCO instances format needed)")
    for ann in data["annotations"]:
        if ann.get("id", 0) == 0:
            # COCOeval stores matches as annotation ids with 0 meaning "unmatched": id 0 would never match
            raise ValueError(f"{where}: annotation {ann!r:.120} has id {ann.get('id')!r}; ids must be non-zero")
        ann.setdefault("iscrowd", 0)
    coco = COCO()
    coco.dataset = data
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _prediction_rle(pred: dict[str, Any], image: dict[str, Any], index: int) -> dict[str, Any]:
    segmentation = pred.get("segmentation")
    if segmentation is None:
        raise ValueError(f"prediction {index} (image_id {pred['image_id']!r}) has no 'segmentation'; "
                         "segm and boundary evaluation need masks")
    height, width = image["height"], image["width"]
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    if list(segmentation["size"]) != [height, width]:
        raise ValueError(f"prediction {index}: RLE size {segmentation['size']} differs from image "
                         f"{pred['image_id']!r}'s [height, width] [{height}, {width}]")
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def _results(gt: COCO, predictions: Sequence[dict[str, Any]], iou_type: str, verbose: bool) -> COCO:
    """The detections for one IoU type as a COCO object (only masks for segm/boundary, only boxes for bbox)."""
    anns = []
    for index, pred in enumerate(predictions):
        base = {"image_id": pred["image_id"], "category_id": pred["category_id"], "score": float(pred["score"])}
        image = gt.imgs[pred["image_id"]]
        if iou_type == "bbox":
            box = pred.get("bbox")
            if box is None:
                box = mask_utils.toBbox(_prediction_rle(pred, image, index)).tolist()
            anns.append({**base, "bbox": [float(v) for v in box]})
        else:
            # no 'bbox' key: loadRes would otherwise take the box branch and replace the mask by the box
            anns.append({**base, "segmentation": _prediction_rle(pred, image, index)})
    if anns:
        with _quiet(verbose):
            return gt.loadRes(anns)
    empty = COCO()  # loadRes cannot take an empty list
    empty.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                     "annotations": []}
    with _quiet(verbose):
        empty.createIndex()
    return empty


def coco_evaluate(
    gt_json_or_dict: str | Path | dict[str, Any],
    predictions: Sequence[dict[str, Any]],
    iou_types: Iterable[str] = ("segm", "bbox"),
    *,
    dilation_ratio: float = 0.02,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO AP of instance predictions against COCO-format ground truth.

    Args:
        gt_json_or_dict: the ground-truth COCO instances JSON (a path) or its dict (not modified).
        predictions: one dict per detection: `image_id`, `category_id` (the COCO id), `score`, and `segmentation`
            (compressed RLE with `counts` str or bytes, uncompressed RLE or polygons) and/or `bbox` (x, y, w, h).
            `bbox` evaluation takes the box from the mask when a prediction has none.
        iou_types: any of "segm", "bbox", "boundary" (Boundary AP with `dilation_ratio`).
        dilation_ratio: boundary band width as a fraction of the image diagonal.
        verbose: let pycocotools print its progress and summary table.

    Returns:
        `{f"{iou_type}_{name}": value}` for name in `AP_NAMES`, as fractions in [0, 1]; NaN where COCO reports -1
        (no ground truth in that area range).
    """
    iou_types = tuple(iou_types)
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown:
        raise ValueError(f"unknown iou_types {unknown}; choose from {IOU_TYPES}")
    gt = _load_gt(gt_json_or_dict, verbose)
    image_ids, cat_ids = set(gt.imgs), set(gt.cats)
    for index, pred in enumerate(predictions):
        missing = [k for k in ("image_id", "category_id", "score") if k not in pred]
        if missing:
            raise ValueError(f"prediction {index} lacks {missing}")
        if pred["image_id"] not in image_ids:
            raise ValueError(f"prediction {index} has image_id {pred['image_id']!r}, which the ground truth lacks")
        if pred["category_id"] not in cat_ids:
            raise ValueError(f"prediction {index} has category_id {pred['category_id']!r}; the ground truth has "
                             f"{sorted(cat_ids)} (predictions use COCO category ids, not contiguous labels)")
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        results = _results(gt, predictions, iou_type, verbose)
        if iou_type == "boundary":
            evaluator: COCOeval = BoundaryCOCOeval(gt, results, dilation_ratio)
        else:
            evaluator = COCOeval(gt, results, iouType=iou_type)
        with _quiet(verbose):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(AP_NAMES, evaluator.stats[: len(AP_NAMES)], strict=True):
            metrics[f"{iou_type}_{name}"] = float(value) if value >= 0 else math.nan
    return metrics


def masks_to_predictions(
    masks: torch.Tensor | np.ndarray, scores: Sequence[float], category_ids: Sequence[int], image_id: Any
) -> list[dict[str, Any]]:
    """COCO result dicts (compressed RLE, counts as str) for binary masks (N, H, W) of one image."""
    m = np.asarray(torch.as_tensor(masks).bool().numpy(), dtype=np.uint8)
    if m.ndim != 3 or not len(m) == len(scores) == len(category_ids):
        raise ValueError(f"masks must be (N, H, W) with N scores and N category ids; got {m.shape}, "
                         f"{len(scores)} scores, {len(category_ids)} category ids")
    if len(m) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0)))
    return [{"image_id": image_id, "category_id": int(c), "score": float(s),
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}}
            for rle, s, c in zip(rles, scores, category_ids, strict=True)]
