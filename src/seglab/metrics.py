"""Semantic-segmentation metrics from a streaming, dataset-level confusion matrix.

Per class: IoU, Acc (= recall), Dice, Fscore, Precision, Recall; summaries: mIoU, mAcc, mDice, mFscore,
mPrecision, mRecall (means over classes) and aAcc (pixel accuracy). The semantics are mmsegmentation's
`IoUMetric`, so numbers compare with published ones:

- pixels whose target is `ignore_index` are skipped, whatever the prediction;
- a per-class value whose denominator is zero is NaN and left out of its mean (`nanmean`): IoU is NaN for a
  class absent from both target and prediction (a class only predicted has IoU 0 and counts), Acc and Recall
  are NaN for a class absent from the target, Precision for a class never predicted;
- the means are over the classes, from counts summed over the whole dataset (not per-image averages).

Instance metrics (COCO mask and box AP through pycocotools, Boundary IoU and Boundary AP) are in
`seglab.metrics_instance`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

PER_CLASS_METRICS = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")
SUMMARY_METRICS = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall")


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~torch.isnan(values)]
    return float(valid.mean()) if valid.numel() else math.nan


class ConfusionMatrix:
    """Counts (target, prediction) pairs over any number of `update` calls.

    `matrix[t, p]` is the number of pixels of target class `t` predicted as `p`. The matrix lives on the device
    of the first update, so GPU evaluation never copies label maps to the CPU.

    Args:
        num_classes: number of classes K; targets and predictions must lie in 0..K-1.
        ignore_index: target value of pixels to skip.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix = torch.zeros_like(self.matrix)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds one batch of label maps.

        Args:
            pred: integer class indices, any shape (e.g. (B, H, W) after argmax).
            target: integer class indices of the same shape; `ignore_index` pixels are skipped.
        """
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}; resize "
                "the logits to the label size before argmax"
            )
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError(f"pred and target must hold integer class indices, got {pred.dtype} and {target.dtype} "
                            "(take argmax over the class dimension of the logits)")
        k = self.num_classes
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        target = target.reshape(-1).to(torch.int64)
        pred = pred.reshape(-1).to(device=target.device, dtype=torch.int64)
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        for name, values in (("target", target), ("prediction", pred)):
            bad = (values < 0) | (values >= k)
            if bad.any():
                found = torch.unique(values[bad])[:10].tolist()
                raise ValueError(f"{name} has value(s) {found} outside 0..{k - 1} (ignore_index {self.ignore_index} "
                                 "is allowed in the target only)")
        self.matrix += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Adds another matrix's counts into this one (e.g. from another worker); returns self."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore_index {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore_index {self.ignore_index})"
            )
        self.matrix = self.matrix + other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sums the matrix over all torch.distributed ranks (a no-op without a process group); returns self."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = self.matrix.device
            if dist.get_backend() == "nccl" and device.type != "cuda":
                device = torch.device("cuda", torch.cuda.current_device())
            reduced = self.matrix.to(device)
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            self.matrix = reduced
        return self

    def compute(self) -> dict[str, Any]:
        """Metrics from the counts so far, as fractions in 0..1 (mmseg prints them times 100).

        Returns:
            Per-class lists under `PER_CLASS_METRICS` (NaN where undefined), float means under
            `SUMMARY_METRICS` (NaN when no class is defined), and `num_pixels` (counted pixels).
        """
        matrix = self.matrix.to("cpu", torch.float64)
        intersect = matrix.diagonal()
        area_target = matrix.sum(dim=1)
        area_pred = matrix.sum(dim=0)
        union = area_target + area_pred - intersect
        per_class = {
            "IoU": intersect / union,
            "Acc": intersect / area_target,
            "Dice": 2 * intersect / (area_target + area_pred),
            "Precision": intersect / area_pred,
            "Recall": intersect / area_target,
        }
        # NOTE: mmseg computes the F-score as 2PR / (P + R) from per-class P and R, which is NaN (0 / 0) for every
        # class without a true positive, where Dice is 0; so mFscore can exceed mDice. Kept for comparable numbers.
        p, r = per_class["Precision"], per_class["Recall"]
        per_class["Fscore"] = 2 * p * r / (p + r)
        total = float(area_target.sum())
        results: dict[str, Any] = {"aAcc": float(intersect.sum()) / total if total > 0 else math.nan}
        for name in PER_CLASS_METRICS:
            results[f"m{name}"] = _nanmean(per_class[name])
        for name in PER_CLASS_METRICS:
            results[name] = [float(v) for v in per_class[name]]
        results["num_pixels"] = int(total)
        return results


def format_table(results: dict[str, Any], class_names: list[str] | tuple[str, ...] | None = None) -> str:
    """A per-class IoU / Acc table followed by the summary metrics, all in percent.

    Args:
        results: the output of `ConfusionMatrix.compute()` (fractions in 0..1).
        class_names: one name per class; default the class index.
    """
    num_classes = len(results["IoU"])
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    def fmt(value: float) -> str:
        return "nan" if math.isnan(value) else f"{value * 100:.2f}"

    width = max(5, *(len(n) for n in names))
    lines = [f"{'Class':<{width}}  {'IoU':>7}  {'Acc':>7}", f"{'-' * width}  {'-' * 7}  {'-' * 7}"]
    for name, iou, acc in zip(names, results["IoU"], results["Acc"], strict=True):
        lines.append(f"{name:<{width}}  {fmt(iou):>7}  {fmt(acc):>7}")
    lines.append("")
    lines.append("  ".join(f"{key}: {fmt(results[key])}" for key in ("aAcc", "mIoU", "mAcc", "mDice", "mFscore")))
    return "\n".join(lines)
