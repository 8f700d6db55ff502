"""Where a model errs: the confusion matrix, per-class IoU, the worst validation images, and accuracy near object
boundaries against the interior (the trimap evaluation of Kohli et al. 2009 / DeepLab, at 3, 5 and 10 px), which is
what boundary refinement (BPR) sets out to improve.

The boundary band of width d holds every pixel within d pixels (Chebyshev distance) of a ground-truth label change
between 4-neighbours, ignored pixels excluded; the interior is every other labelled pixel.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from seglab.analyze.subject import Subject, image_array
from seglab.engine.run import evaluate
from seglab.metrics import ConfusionMatrix

TRIMAP_WIDTHS = (3, 5, 10)


def boundary_band(mask: torch.Tensor, width: int, ignore_index: int = 255) -> torch.Tensor:
    """(H, W) bool: labelled pixels within `width` px of a label change between 4-neighbours of `mask` (H, W)."""
    if width < 1:
        raise ValueError(f"the band width must be at least 1 px, got {width}")
    m = mask.long()
    edge = torch.zeros(m.shape, dtype=torch.bool, device=m.device)
    valid = m != ignore_index
    horizontal = (m[:, 1:] != m[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    vertical = (m[1:, :] != m[:-1, :]) & valid[1:, :] & valid[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    band = F.max_pool2d(edge[None, None].float(), 2 * width + 1, stride=1, padding=width)[0, 0] > 0
    return band & valid


def image_miou(pred: torch.Tensor, mask: torch.Tensor, num_classes: int, ignore_index: int = 255) -> float:
    """Mean IoU of one image over the classes in its ground truth or its prediction."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    cm.update(pred[None], mask[None])
    m = cm.matrix.double()
    union = m.sum(0) + m.sum(1) - m.diagonal()
    present = union > 0
    return float((m.diagonal()[present] / union[present]).mean()) if present.any() else float("nan")


@dataclass
class ErrorAnalysis:
    """What `error_analysis` gathers; rates are fractions."""

    metrics: dict
    confusion: torch.Tensor
    trimap: dict[int, dict[str, float]]
    worst: list[dict] = field(default_factory=list)


def error_analysis(subject: Subject, dataset, worst_k: int = 8, widths: Sequence[int] = TRIMAP_WIDTHS,
                   on_batch=None) -> ErrorAnalysis:
    """Evaluates `subject` on `dataset` with its config's inference settings, keeping the confusion matrix, the
    band / interior accuracy and mIoU at each width, and the `worst_k` images by per-image mIoU (with their
    image, ground truth and prediction)."""
    num_classes = subject.model.num_classes
    ignore = subject.config.data.ignore_index
    band_cm = {d: ConfusionMatrix(num_classes, ignore) for d in widths}
    inner_cm = {d: ConfusionMatrix(num_classes, ignore) for d in widths}
    full = ConfusionMatrix(num_classes, ignore)
    worst: list[tuple[float, int, dict]] = []  # a max-heap on -score: the k lowest scores stay
    seen = [0]

    def collect(samples, predictions):
        full.update(predictions, torch.stack([s["mask"] for s in samples]))
        for sample, pred in zip(samples, predictions, strict=True):
            mask = sample["mask"]
            for d in widths:
                band = boundary_band(mask, d, ignore)
                band_cm[d].update(pred[None], torch.where(band, mask, ignore)[None])
                inner_cm[d].update(pred[None], torch.where(band, ignore, mask)[None])
            score = image_miou(pred, mask, num_classes, ignore)
            entry = (-score, seen[0], {"index": seen[0], "path": sample.get("path", str(seen[0])), "mIoU": score,
                                       "image": image_array(sample["image"]), "mask": mask.numpy(),
                                       "pred": pred.numpy()})
            if len(worst) < worst_k:
                heapq.heappush(worst, entry)
            elif worst_k and -score > worst[0][0]:
                heapq.heapreplace(worst, entry)
            seen[0] += 1
        if on_batch is not None:
            on_batch(len(samples))

    metrics = evaluate(subject.model, dataset, subject.config, num_classes, subject.device, on_batch=collect)
    trimap = {}
    for d in widths:
        b, i = band_cm[d].compute(), inner_cm[d].compute()
        trimap[d] = {"band_acc": b["aAcc"], "band_mIoU": b["mIoU"], "band_pixels": b["num_pixels"],
                     "interior_acc": i["aAcc"], "interior_mIoU": i["mIoU"], "interior_pixels": i["num_pixels"]}
    ranked = [entry for _, _, entry in sorted(worst, key=lambda e: (-e[0], e[1]))]
    return ErrorAnalysis(metrics, full.matrix.clone(), trimap, ranked)


def error_map(pred: np.ndarray, mask: np.ndarray, image: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W, 3) uint8: the image darkened where the prediction is right, red where it is wrong, black where the
    ground truth is ignored."""
    out = (image.astype(np.float64) * 0.35).astype(np.uint8)
    wrong = (pred != mask) & (mask != ignore_index)
    out[wrong] = (230, 30, 30)
    out[mask == ignore_index] = 0
    return out


def plot_worst(worst: list[dict], palette, out_png, ignore_index: int = 255):
    """One row per image: input | ground truth | prediction | error map, with its mIoU."""
    from matplotlib.figure import Figure

    from seglab.analyze.report import save_figure
    from seglab.tools.visualize import colorize

    if not worst:
        raise ValueError("no images to draw")
    figure = Figure(figsize=(8.5, 2.2 * len(worst)), dpi=100, layout="constrained")
    axes = figure.subplots(len(worst), 4, squeeze=False)
    for row, entry in zip(axes, worst, strict=True):
        panels = (entry["image"], colorize(entry["mask"], palette, ignore_index),
                  colorize(entry["pred"], palette, ignore_index),
                  error_map(entry["pred"], entry["mask"], entry["image"], ignore_index))
        for ax, panel, title in zip(row, panels, ("input", "ground truth", "prediction", "errors (red)"), strict=True):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        name = str(entry["path"]).rsplit("/", 1)[-1]
        row[0].set_ylabel(f"{name}\nmIoU {100 * entry['mIoU']:.1f}", fontsize=8)
    return save_figure(figure, out_png)


def plot_class_iou(results: dict[str, list[float]], class_names: Sequence[str], out_png):
    """Per-class IoU (%) bars, one colour per model."""
    from matplotlib.figure import Figure

    from seglab.analyze.report import save_figure

    k = len(class_names)
    figure = Figure(figsize=(max(6.0, 0.5 * k * max(1, len(results)) + 2), 3.8), dpi=100, layout="constrained")
    ax = figure.subplots()
    width = 0.8 / max(len(results), 1)
    for index, (label, ious) in enumerate(results.items()):
        xs = np.arange(k) + (index - (len(results) - 1) / 2) * width
        ax.bar(xs, [100 * (v if v == v else 0.0) for v in ious], width, label=label, color=f"C{index % 10}")
    ax.set_xticks(range(k), list(class_names), rotation=45 if k > 8 else 0, ha="right" if k > 8 else "center")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("per-class IoU")
    return save_figure(figure, out_png)


def plot_trimap(results: dict[str, dict[int, dict[str, float]]], out_png):
    """Accuracy in the boundary band against the band width, and the interior's, one colour per model."""
    from matplotlib.figure import Figure

    from seglab.analyze.report import finish_line_plot

    figure = Figure(figsize=(6.5, 3.8), dpi=100, layout="constrained")
    ax = figure.subplots()
    for index, (label, trimap) in enumerate(results.items()):
        widths = sorted(trimap)
        colour = f"C{index % 10}"
        ax.plot(widths, [100 * trimap[d]["band_acc"] for d in widths], "-o", color=colour, label=f"{label} band")
        ax.plot(widths, [100 * trimap[d]["interior_acc"] for d in widths], ":s", color=colour,
                label=f"{label} interior")
    return finish_line_plot(figure, ax, out_png, "band width (px from a ground-truth boundary)",
                            "pixel accuracy (%)", "boundary band vs interior accuracy (trimap)")
