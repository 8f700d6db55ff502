"""Pictures of segmentations: palettes, colour label maps, overlays, indexed PNGs and training curves.

Label maps are (H, W) integer arrays of class indices; `ignore_index` (255) marks unlabelled pixels, drawn
black. Images are (H, W, 3) uint8 RGB. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seglab.checkpoint import atomic_write
from seglab.palette import make_palette  # noqa: F401  (part of the drawing API)

IGNORE_INDEX = 255


def _to_numpy(array: Any, name: str) -> np.ndarray:
    """A numpy view of an array-like or a (CPU or device) torch tensor."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        array = array.detach().cpu().numpy()
    if not isinstance(array, (np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a numpy array or a tensor, got {type(array).__name__}")
    return np.asarray(array)


def _check_palette(palette: Any) -> np.ndarray:
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must have shape (K, 3), got {palette.shape}")
    return palette.astype(np.uint8)


def _check_labels(labels: Any, num_classes: int, ignore_index: int) -> np.ndarray:
    labels = _to_numpy(labels, "labels")
    if labels.ndim != 2:
        raise ValueError(f"labels must be an (H, W) map of class indices, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = np.unique(labels[bad])[:10].tolist()
        raise ValueError(f"labels hold values {values} outside [0, {num_classes}) for a palette of "
                         f"{num_classes} colours (and not the ignore index {ignore_index})")
    return labels


def _check_image(image: Any, shape: tuple[int, int]) -> np.ndarray:
    image = _to_numpy(image, "image")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
    if image.shape[:2] != shape:
        raise ValueError(f"image is {image.shape[:2]} but labels are {shape}: they must have the same (H, W)")
    return image


def colorize(labels: Any, palette: Any, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; `ignore_index` pixels are black.

    Args:
        labels: (H, W) integer class indices.
        palette: (K, 3) uint8 colours.
        ignore_index: the label drawn black.
    """
    palette = _check_palette(palette)
    labels = _check_labels(labels, len(palette), ignore_index)
    ignored = labels == ignore_index
    colours = palette[np.where(ignored, 0, labels)]
    colours[ignored] = 0
    return colours


def overlay(
    image: Any, labels: Any, palette: Any, alpha: float = 0.5, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Blends label colours over an image: `(1 - alpha) * image + alpha * colour`; ignored pixels keep the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) integer class indices.
        palette: (K, 3) uint8 colours.
        alpha: weight of the label colours, in [0, 1].
        ignore_index: the label left unblended.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(labels, palette, ignore_index)
    image = _check_image(image, colours.shape[:2])
    blended = np.rint((1.0 - alpha) * image.astype(np.float64) + alpha * colours.astype(np.float64))
    ignored = _to_numpy(labels, "labels") == ignore_index
    blended[ignored] = image[ignored]
    return blended.clip(0, 255).astype(np.uint8)


def _save_png(path: str | Path, picture: Image.Image) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return path


def save_label_png(path: str | Path, labels: Any, palette: Any, ignore_index: int = IGNORE_INDEX) -> Path:
    """Writes an indexed (P-mode) PNG: pixel values are the class indices, the PNG palette colours them.

    Reading it back with PIL (`np.asarray(Image.open(path))`) gives the indices; viewers show the colours.
    Ignored pixels keep their index and are black.

    Args:
        path: the `.png` file to write.
        labels: (H, W) integer class indices.
        palette: (K, 3) uint8 colours, K <= 255 (a PNG palette has 256 entries and 255 is the ignore index).
        ignore_index: the label drawn black; must fit in a byte.
    """
    return _save_png(path, label_picture(labels, palette, ignore_index))


def label_picture(labels: Any, palette: Any, ignore_index: int = IGNORE_INDEX) -> Image.Image:
    """The P-mode picture `save_label_png` writes (class indices as pixels, the palette colouring them)."""
    palette = _check_palette(palette)
    if len(palette) > 255 or not 0 <= ignore_index <= 255:
        raise ValueError(f"an indexed PNG holds at most 255 classes plus an ignore index in [0, 255], got "
                         f"{len(palette)} classes and ignore index {ignore_index}")
    labels = _check_labels(labels, len(palette), ignore_index)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    table[ignore_index] = 0
    height, width = labels.shape
    picture = Image.frombytes("P", (width, height), np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    picture.putpalette(table.reshape(-1).tolist())
    return picture


def save_overlay_png(
    path: str | Path, image: Any, labels: Any, palette: Any, alpha: float = 0.5, ignore_index: int = IGNORE_INDEX,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Writes `overlay(image, labels, palette, alpha)` as an RGB PNG, with a legend of the classes present when
    `class_names` is given.

    Args:
        path: the `.png` file to write.
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) integer class indices.
        palette: (K, 3) uint8 colours.
        alpha: weight of the label colours.
        ignore_index: the label left unblended.
        class_names: one name per class; the legend (right of the image) lists the classes present.
    """
    blended = overlay(image, labels, palette, alpha, ignore_index)
    if class_names is not None:
        present = [int(c) for c in np.unique(_to_numpy(labels, "labels")) if c != ignore_index]
        blended = with_legend(blended, [(class_names[c], _check_palette(palette)[c]) for c in present])
    return _save_png(path, Image.fromarray(blended))


def _legend_font(size: int):
    """DejaVu Sans (shipped with matplotlib, a dependency) at `size` pixels; PIL's bitmap font if it is missing."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=False), size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default()


def with_legend(picture: np.ndarray, entries: Sequence[tuple[str, Any]], row_height: int | None = None) -> np.ndarray:
    """`picture` (H, W, 3) with a white panel on its right listing `entries` (name, colour): a colour swatch and
    the name per row, in as many columns as the picture's height needs. The rows grow with the picture (1/30 of
    its height, 14-40 px) so that the names stay readable on large images."""
    from PIL import ImageDraw

    if not entries:
        return picture
    if row_height is None:
        row_height = int(min(40, max(14, picture.shape[0] // 30)))
    font = _legend_font(row_height - 4)
    height = max(picture.shape[0], row_height + 4)
    rows = max(1, (height - 4) // row_height)
    columns = math.ceil(len(entries) / rows)
    text_width = max(int(font.getlength(name)) for name, _ in entries)
    column_width = text_width + row_height + 10
    panel = Image.new("RGB", (columns * column_width + 4, height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (name, colour) in enumerate(entries):
        x, y = 4 + (i // rows) * column_width, 2 + (i % rows) * row_height
        draw.rectangle([x, y + 2, x + row_height - 5, y + row_height - 3], fill=tuple(int(v) for v in colour),
                       outline=(0, 0, 0))
        draw.text((x + row_height, y), name, fill=(0, 0, 0), font=font)
    out = np.full((height, picture.shape[1] + panel.width, 3), 255, dtype=np.uint8)
    out[: picture.shape[0], : picture.shape[1]] = picture
    out[:, picture.shape[1]:] = np.asarray(panel)
    return out


def save_side_by_side(
    path: str | Path,
    image: Any,
    gt: Any | None,
    pred: Any,
    palette: Any,
    ignore_index: int = IGNORE_INDEX,
    gap: int = 4,
) -> Path:
    """Writes image | ground truth | prediction as one RGB PNG, panels separated by white columns.

    Args:
        path: the `.png` file to write.
        image: (H, W, 3) uint8 RGB.
        gt: (H, W) ground-truth class indices, or None to show image | prediction.
        pred: (H, W) predicted class indices.
        palette: (K, 3) uint8 colours.
        ignore_index: the label drawn black.
        gap: width in pixels of the white separators.
    """
    pred_colours = colorize(pred, palette, ignore_index)
    panels = [_check_image(image, pred_colours.shape[:2])]
    if gt is not None:
        gt_colours = colorize(gt, palette, ignore_index)
        if gt_colours.shape != pred_colours.shape:
            raise ValueError(f"gt is {gt_colours.shape[:2]} but pred is {pred_colours.shape[:2]}")
        panels.append(gt_colours)
    panels.append(pred_colours)
    separator = np.full((pred_colours.shape[0], gap, 3), 255, dtype=np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [separator, panel]
    return _save_png(path, Image.fromarray(np.concatenate(row, axis=1)))


def _read_log(path: Path) -> tuple[list[tuple[int, float, float | None]], list[tuple[int, float]]]:
    """(iter, loss, lr) of train records and (iter, mIoU) of eval records of a JSONL training log."""
    train, evals = [], []
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no} is not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no} must be a JSON object, got {type(record).__name__}")
            kind = record.get("kind", "train" if "loss" in record else "eval" if "mIoU" in record else None)
            if kind not in ("train", "eval"):
                continue  # other record kinds (e.g. run info) are not plotted
            key = "loss" if kind == "train" else "mIoU"
            if "iter" not in record or key not in record:
                raise ValueError(f"{path}:{line_no}: {kind} record needs 'iter' and {key!r}, got {sorted(record)}")
            if kind == "train":
                train.append((int(record["iter"]), float(record["loss"]), record.get("lr")))
            else:
                evals.append((int(record["iter"]), float(record["mIoU"])))
    return train, evals


def _smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    smoothed, average = [], 0.0
    for step, value in enumerate(values, start=1):
        average = weight * average + (1.0 - weight) * value
        smoothed.append(average / (1.0 - weight**step))
    return smoothed


def plot_training_curve(jsonl_path: str | Path, out_png: str | Path, smoothing: float = 0.9) -> Path:
    """Plots loss (raw and smoothed) and mIoU against iteration from a JSONL training log; lr in a lower panel.

    Each line of the log is a JSON object with `"kind": "train"` (`iter`, `loss`, optional `lr`) or
    `"kind": "eval"` (`iter`, `mIoU`); other kinds are skipped.

    Args:
        jsonl_path: the training log.
        out_png: the `.png` file to write.
        smoothing: weight of the exponential moving average of the loss, in [0, 1).
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display backend needed

    jsonl_path = Path(jsonl_path)
    if not jsonl_path.is_file():
        raise FileNotFoundError(f"training log not found: {jsonl_path}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    train, evals = _read_log(jsonl_path)
    if not train and not evals:
        raise ValueError(f"{jsonl_path} has no train records (iter, loss) and no eval records (iter, mIoU)")
    lrs = [(it, float(lr)) for it, _, lr in train if lr is not None]
    figure = Figure(figsize=(8, 6 if lrs else 4.5), layout="constrained")
    axes = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1]) if lrs else [figure.subplots()]
    loss_ax = axes[0]
    loss_ax.set_title(jsonl_path.stem)
    if train:
        iters = [it for it, _, _ in train]
        losses = [loss for _, loss, _ in train]
        loss_ax.plot(iters, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
        # the averaging window (about 1 / (1 - weight) points) at most ~5% of the curve: a short log with few
        # records would otherwise show a smoothed line lagging far behind the raw one
        weight = min(smoothing, max(0.0, 1.0 - 1.0 / max(1.0, 0.05 * len(losses))))
        loss_ax.plot(iters, _smooth(losses, weight), color="tab:blue", linewidth=2, label="loss (smoothed)")
        loss_ax.set_ylabel("loss")
        loss_ax.grid(alpha=0.3)
    handles, labels = loss_ax.get_legend_handles_labels()
    if evals:
        miou_ax = loss_ax.twinx()
        finite = [(it, v) for it, v in evals if math.isfinite(v)]
        miou_ax.plot([it for it, _ in finite], [v for _, v in finite], color="tab:orange", marker="o",
                     linewidth=2, label="mIoU")
        miou_ax.set_ylabel("mIoU")
        more_handles, more_labels = miou_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    loss_ax.legend(handles, labels, loc="upper right")
    if lrs:
        axes[1].plot([it for it, _ in lrs], [lr for _, lr in lrs], color="tab:green")
        axes[1].set_ylabel("lr")
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    out_png = Path(out_png)
    atomic_write(out_png, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    return out_png


_NORMALIZE_MODES = ("true", "pred", "all", "none")


def _normalized_confusion(counts: np.ndarray, normalize: str | None) -> np.ndarray:
    """Counts -> the values drawn: fractions of each row, column or the total; NaN where a row/column is empty."""
    counts = counts.astype(np.float64)
    if normalize in (None, "none"):
        return counts
    if normalize == "true":
        totals = counts.sum(axis=1, keepdims=True)
    elif normalize == "pred":
        totals = counts.sum(axis=0, keepdims=True)
    else:
        totals = np.full((1, 1), counts.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), np.nan)


def plot_confusion_matrix(
    matrix: Any,
    class_names: Sequence[str] | None,
    out_png: str | Path,
    normalize: str | None = "true",
    title: str | None = None,
) -> Path:
    """Draws a confusion matrix as a heat map PNG, rows = ground truth, columns = prediction.

    With `normalize="true"` each row is divided by its total, so the diagonal is the per-class accuracy
    (recall) and a row shows where that class's pixels went; rows of classes absent from the ground truth are
    drawn grey. Fractions are coloured on a square-root scale so that confusions of a few percent stay visible
    next to a diagonal near 1. The figure grows with the number of classes (up to 20 inches at 100 dpi, ADE20K's
    150 classes all labelled); cells carry their value as text up to 25 classes, tick labels shrink with the
    cell size and, beyond about 240 classes, only every n-th class is labelled (with its index) so that labels
    never overlap.

    Args:
        matrix: (K, K) counts, `matrix[t, p]` = pixels of target class t predicted as p: a
            `seglab.metrics.ConfusionMatrix`, its `.matrix` tensor, or an array.
        class_names: K names, or None for the class indices.
        out_png: the `.png` file to write.
        normalize: "true" (rows sum to 1), "pred" (columns sum to 1), "all" (everything sums to 1), or
            "none" / None for raw counts (drawn on a log scale).
        title: figure title; by default it names the normalisation.
    """
    from matplotlib.colors import LogNorm, PowerNorm
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display backend needed

    if hasattr(matrix, "matrix") and hasattr(matrix, "num_classes"):  # a seglab.metrics.ConfusionMatrix
        matrix = matrix.matrix
    counts = _to_numpy(matrix, "matrix")
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] < 1:
        raise ValueError(f"matrix must be a square (K, K) confusion matrix, got shape {counts.shape}")
    if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
        raise TypeError(f"matrix must hold counts (integers or floats), got dtype {counts.dtype}")
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise ValueError("matrix must hold finite, non-negative counts")
    if normalize not in (*_NORMALIZE_MODES, None):
        raise ValueError(f"normalize must be one of {', '.join(_NORMALIZE_MODES)} or None, got {normalize!r}")
    num_classes = counts.shape[0]
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}x{num_classes} confusion matrix")
    values = _normalized_confusion(counts, normalize)
    raw = normalize in (None, "none")

    side = float(np.clip(3.0 + 0.11 * num_classes, 6.0, 20.0))  # inches; ~0.11 in (11 px) per class when large
    figure = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    ax = figure.subplots()
    # the grey background shows through the NaN (masked) cells of empty rows / columns
    ax.set_facecolor("0.85")
    positive = values[np.isfinite(values) & (values > 0)]
    if raw:
        norm = LogNorm(vmin=1.0, vmax=max(float(positive.max()) if positive.size else 1.0, 10.0))
        shown = np.ma.masked_less_equal(values, 0)  # zero counts have no log; drawn as the background
        ax.set_facecolor("white")
    else:
        norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
        shown = np.ma.masked_invalid(values)
    image = ax.imshow(shown, cmap="Blues", norm=norm, interpolation="nearest", aspect="equal")
    colorbar = figure.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
    share = {"true": "of each ground-truth row", "pred": "of each predicted column", "all": "of all pixels"}
    colorbar.set_label("pixels" if raw else f"fraction {share[normalize]}")

    # points per cell along an axis, the axes taking roughly 75 % of the figure's height
    cell_pt = 0.75 * side * 72.0 / num_classes
    fontsize = float(np.clip(0.8 * cell_pt, 4.0, 10.0))
    step = max(1, int(np.ceil(fontsize / (0.9 * cell_pt))))  # label every step-th class so labels never overlap
    ticks = np.arange(0, num_classes, step)
    tick_names = [names[i] if step == 1 else f"{i}: {names[i]}" for i in ticks]
    ax.set_xticks(ticks, tick_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, tick_names, fontsize=fontsize)
    ax.tick_params(length=2 if step == 1 else 3)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    if title is None:
        title = {"none": "confusion matrix (pixel counts)", "true": "confusion matrix, rows normalised (diagonal = "
                 "per-class accuracy)", "pred": "confusion matrix, columns normalised (diagonal = precision)",
                 "all": "confusion matrix, fractions of all pixels"}[normalize or "none"]
        if step > 1:
            title += f"; every {step}th class labelled"
    ax.set_title(title)

    if num_classes <= 25:
        text_size = float(np.clip(0.35 * cell_pt, 5.0, 10.0))
        for t in range(num_classes):
            for p in range(num_classes):
                value = values[t, p]
                if not np.isfinite(value):
                    continue
                dark = bool(norm(value) > 0.6)
                if value == 0:
                    continue  # empty cells stay blank: the non-zero confusions stand out
                text = f"{value:.0f}" if raw else f"{value:.2f}"
                ax.text(p, t, text, ha="center", va="center", fontsize=text_size,
                        color="white" if dark else "black")

    out_png = Path(out_png)
    atomic_write(out_png, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    return out_png
