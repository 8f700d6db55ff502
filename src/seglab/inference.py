"""Inference policies over any segmentation model: whole image, sliding window, flip and multi-scale TTA.

The model is only asked for `model(images) -> logits` (B, K, h, w) at any stride; everything here is outside
the model, so the same policies apply to every family and to exported graphs. Semantics follow
mmsegmentation's `EncoderDecoder`:

- whole: the model's logits for the image, resized bilinearly to the output size.
- slide: a grid of `g = max(H - crop + stride - 1, 0) // stride + 1` windows per axis, window `i` starting at
  `i * stride` and clamped to the border (`y2 = min(y1 + crop, H)`, `y1 = max(y2 - crop, 0)`); each window's
  logits are resized to the window, summed into one (B, K, H, W) accumulator and divided by the number of
  windows covering each pixel. An image smaller than the crop is a single window, so it equals whole mode.
- test-time augmentation: every (scale, flip) pair is run on its own; its logits are resized once to the
  output size, softmaxed, flipped back, and the probabilities are averaged (mmseg's `aug_test`).

Images of any size: `slide_labels` gives the class indices of slide inference without the (B, K, H, W)
accumulator, and `resized_labels` the indices of logits resized to a large output without materialising them;
both equal `argmax` of the plain forms exactly (same additions in the same order, same divisions).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers.shape import resize

_MODES = ("whole", "slide")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """`value` as a (height, width) pair of positive ints."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got a {images.ndim}-d tensor {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a normalised floating-point tensor, got dtype {images.dtype}")
    if min(images.shape) == 0:
        raise ValueError(f"images must not have an empty dimension, got shape {tuple(images.shape)}")


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`model(images)`, checked to be a (B, K, h, w) logits tensor."""
    out = model(images)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != images.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"model(images) must return logits of shape (B, K, h, w) with B={images.shape[0]}, got {got}")
    return out


def slide_windows(
    height: int, width: int, crop_size: int | Sequence[int], stride: int | Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding-window grid over a `height` x `width` image, row by row.

    Args:
        height: image height.
        width: image width.
        crop_size: window size, an int or (height, width); windows are smaller only when the image is.
        stride: step between window starts, an int or (height, width); must not exceed the crop.

    Returns:
        `(y1, y2, x1, x2)` boxes (end exclusive), the last row/column clamped to the border.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    stride_h, stride_w = _pair(stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {stride_h, stride_w} must not exceed crop_size {crop_h, crop_w}: "
                         f"pixels between windows would not be covered")
    grid_h = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    grid_w = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for i in range(grid_h):
        y2 = min(i * stride_h + crop_h, height)
        y1 = max(y2 - crop_h, 0)
        for j in range(grid_w):
            x2 = min(j * stride_w + crop_w, width)
            x1 = max(x2 - crop_w, 0)
            boxes.append((y1, y2, x1, x2))
    return boxes


def whole_inference(
    model: nn.Module, images: torch.Tensor, out_size: int | Sequence[int] | None = None, align_corners: bool = False
) -> torch.Tensor:
    """Logits of the whole image, resized bilinearly to `out_size` (default: the input size).

    Args:
        model: returns (B, K, h, w) logits at any stride.
        images: normalised (B, C, H, W) float tensor.
        out_size: (height, width) of the result.
        align_corners: `align_corners` of the bilinear resize.
    """
    _check_images(images)
    size = _pair(out_size, "out_size") if out_size is not None else tuple(images.shape[-2:])
    return resize(_logits(model, images), size, align_corners=align_corners)


def _window_logits(
    model: nn.Module,
    images: torch.Tensor,
    boxes: list[tuple[int, int, int, int]],
    window_batch: int,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[torch.Tensor]:
    """Each window's (B, K, h, w) logits at the model's stride, in `boxes` order.

    A forward pass takes `window_batch` consecutive windows (each carrying the B images). Callers resize each
    window on its own (or a few classes at a time), which gives the values of resizing the whole batch.
    """
    batch = images.shape[0]
    for start in range(0, len(boxes), window_batch):
        chunk = boxes[start : start + window_batch]
        crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])  # (n * B, C, win_h, win_w)
        if preprocess is not None:
            crops = preprocess(crops)
        logits = _logits(model, crops)
        for k in range(len(chunk)):
            yield logits[k * batch : (k + 1) * batch]


def _check_window_batch(window_batch: int) -> None:
    if not isinstance(window_batch, int) or window_batch < 1:
        raise ValueError(f"window_batch must be a positive int, got {window_batch!r}")


def slide_inference(
    model: nn.Module,
    images: torch.Tensor,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int],
    align_corners: bool = False,
    window_batch: int = 8,
) -> torch.Tensor:
    """Sliding-window logits at the input size: window logits summed and divided by the per-pixel count.

    Holds a (B, K, H, W) float32 accumulator; `slide_labels` gives the same class indices without it.

    Args:
        model: returns (B, K, h, w) logits at any stride.
        images: normalised (B, C, H, W) float tensor.
        crop_size: window size, an int or (height, width).
        stride: step between windows, an int or (height, width).
        align_corners: `align_corners` of the bilinear resize of each window's logits to the window size.
        window_batch: windows per forward pass (each carrying the B images, so the batch is `window_batch * B`).
    """
    _check_images(images)
    _check_window_batch(window_batch)
    batch, _, height, width = images.shape
    boxes = slide_windows(height, width, crop_size, stride)
    total: torch.Tensor | None = None
    count = torch.zeros(height, width, dtype=torch.int32, device=images.device)
    window = (boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2])  # every window has this size
    for (y1, y2, x1, x2), logits in zip(boxes, _window_logits(model, images, boxes, window_batch)):
        logits = resize(logits, window, align_corners=align_corners)
        if total is None:
            dtype = torch.promote_types(logits.dtype, torch.float32)  # sum half-precision outputs in float32
            total = logits.new_zeros((batch, logits.shape[1], height, width), dtype=dtype)
        total[:, :, y1:y2, x1:x2] += logits
        count[y1:y2, x1:x2] += 1
    assert total is not None  # slide_windows always returns at least one window
    return total / count.to(total.dtype)


# streaming working sizes: float32 elements resized per pass, rows reduced per pass
_PASS_ELEMENTS = 2**22
_REDUCE_ROWS = 64


def label_dtype(num_classes: int) -> torch.dtype:
    """The smallest integer dtype that holds class indices `0 .. num_classes - 1`."""
    if num_classes <= 256:
        return torch.uint8
    return torch.int16 if num_classes <= 2**15 else torch.int64


def _spans_count(spans: list[tuple[int, int]], length: int, device: torch.device) -> torch.Tensor:
    """How many of the `(start, end)` spans cover each of `length` positions (int32)."""
    count = torch.zeros(length, dtype=torch.int32, device=device)
    for start, end in spans:
        count[start:end] += 1
    return count


@torch.no_grad()
def slide_labels(
    model: nn.Module,
    images: torch.Tensor,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int],
    align_corners: bool = False,
    window_batch: int = 8,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    with_scores: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Class indices of sliding-window inference, streamed: equal to `slide_inference(...).argmax(1)`, without
    its (B, K, H, W) accumulator.

    Windows run in the same row-major order and forward batches as `slide_inference`, so every pixel sums the
    same values in the same order. The float32 sums live in a window-sized band (the current window; the next
    window of its row shares some of its columns) and a carry of the rows the next row of windows overlaps
    (crop - stride rows x W; up to crop - 1 rows before a last row clamped to the border); a pixel is divided
    by its window count and reduced to its argmax as soon as no later window touches it. The float buffers
    stay under K x (crop x W + 3 crop x crop) values whatever H is, plus the (B, H, W) labels.

    Args:
        model: returns (B, K, h, w) logits at any stride.
        images: (B, C, H, W); normalised floats, or anything `preprocess` turns into them (e.g. uint8 pixels, so
            a huge image is never held in float32: each window batch is normalised on its own).
        crop_size: window size, an int or (height, width).
        stride: step between windows, an int or (height, width).
        align_corners: `align_corners` of the bilinear resize of each window's logits to the window size.
        window_batch: windows per forward pass.
        preprocess: applied to each batch of cropped windows before the model (normalisation, device transfer).
        with_scores: also return the top-1 softmax probability of the averaged logits, (B, H, W) float32.

    Returns:
        labels (B, H, W) in `label_dtype(K)` (uint8 up to 256 classes), and the scores when asked for.
    """
    if preprocess is None:
        _check_images(images)
    elif not isinstance(images, torch.Tensor) or images.ndim != 4 or min(images.shape) == 0:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    _check_window_batch(window_batch)
    batch, _, height, width = images.shape
    boxes = slide_windows(height, width, crop_size, stride)
    rows = list(dict.fromkeys((y1, y2) for y1, y2, _, _ in boxes))  # window rows, top to bottom
    cols = list(dict.fromkeys((x1, x2) for _, _, x1, x2 in boxes))  # window columns, left to right
    win_h, win_w = rows[0][1] - rows[0][0], cols[0][1] - cols[0][0]
    carry_rows = max((rows[i][1] - rows[i + 1][0] for i in range(len(rows) - 1)), default=0)
    windows = _window_logits(model, images, boxes, window_batch, preprocess)

    labels = scores = carry = band = row_count = col_count = None
    for i, (top, bottom) in enumerate(rows):
        next_top = rows[i + 1][0] if i + 1 < len(rows) else bottom
        final_rows = next_top - top  # rows [top, next_top) are finished by this row of windows
        carried = rows[i - 1][1] - top if i > 0 else 0  # rows [top, top + carried) hold sums of earlier rows
        for j, (left, right) in enumerate(cols):
            logits = next(windows)
            if labels is None:  # the first window tells the class count, dtype and device
                num_classes, device = logits.shape[1], logits.device
                dtype = torch.promote_types(logits.dtype, torch.float32)  # sum half-precision outputs in float32
                labels = torch.empty((batch, height, width), dtype=label_dtype(num_classes), device=device)
                scores = torch.empty((batch, height, width), device=device) if with_scores else None
                carry = torch.zeros((batch, num_classes, carry_rows, width), dtype=dtype, device=device)
                band = torch.empty((batch, num_classes, win_h, win_w), dtype=dtype, device=device)
                row_count = _spans_count(rows, height, device)
                col_count = _spans_count(cols, width, device)
                classes_per_pass = max(1, _PASS_ELEMENTS // (batch * win_h * win_w))
            # the band moves to this window's columns: columns the previous window left unfinished keep their
            # sums (moved left in pieces no wider than the shift, so no piece overlaps its source), new columns
            # start from the carried sums of the rows above (or zero)
            kept = cols[j - 1][1] - left if j > 0 else 0
            shift = win_w - kept
            for x in range(0, kept, shift):
                piece = min(shift, kept - x)
                band[..., x : x + piece] = band[..., x + shift : x + shift + piece]
            band[..., kept:] = 0
            if carried:
                band[:, :, :carried, kept:] = carry[:, :, :carried, left + kept : right]
            # add the window's logits resized to the window, a few classes at a time (the values of resizing all)
            for c in range(0, num_classes, classes_per_pass):
                band[:, c : c + classes_per_pass] += resize(logits[:, c : c + classes_per_pass], (win_h, win_w),
                                                            align_corners=align_corners)
            # columns no later window of this row touches are finished: reduce the finished rows, carry the rest
            done = (cols[j + 1][0] if j + 1 < len(cols) else right) - left
            if not done:
                continue
            for y in range(0, final_rows, _REDUCE_ROWS):  # a few rows at a time: small temporaries
                stop = min(y + _REDUCE_ROWS, final_rows)
                count = (row_count[top + y : top + stop, None] * col_count[None, left : left + done]).to(dtype)
                mean = band[:, :, y:stop, :done] / count
                labels[:, top + y : top + stop, left : left + done] = mean.argmax(1).to(labels.dtype)
                if scores is not None:
                    scores[:, top + y : top + stop, left : left + done] = torch.softmax(mean, 1).amax(1)
            if final_rows < win_h:
                carry[:, :, : win_h - final_rows, left : left + done] = band[:, :, final_rows:, :done]
    assert labels is not None  # slide_windows always returns at least one window
    return (labels, scores) if with_scores else labels


@torch.no_grad()
def resized_labels(
    logits: torch.Tensor, size: int | Sequence[int], align_corners: bool = False, max_bytes: int = 2**28
) -> torch.Tensor:
    """`resize(logits, size).argmax(1)` without the (B, K, H, W) resized logits: classes are resized a few at a
    time (at most `max_bytes` of float32 per pass) and a running maximum keeps the first of equal values, as
    `argmax` does.

    Returns:
        (B, H, W) class indices in `label_dtype(K)`.
    """
    height, width = _pair(size, "size")
    batch, num_classes = logits.shape[:2]
    per_pass = max(1, min(num_classes, max_bytes // max(4 * batch * height * width, 1)))
    labels = best = None
    for start in range(0, num_classes, per_pass):
        part = resize(logits[:, start : start + per_pass], (height, width), align_corners=align_corners)
        part_best, part_index = part.max(1)  # the first index among equal values
        if labels is None:
            best, labels = part_best, part_index.to(label_dtype(num_classes))
            continue
        better = part_best > best  # strictly: an earlier class keeps a tie
        best = torch.where(better, part_best, best)
        labels = torch.where(better, (part_index + start).to(labels.dtype), labels)
    assert labels is not None
    return labels


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    # round half up, as mmcv's rescale does
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    out_size: int | Sequence[int] | None = None,
    align_corners: bool = False,
    window_batch: int = 8,
) -> torch.Tensor:
    """Per-pixel class probabilities, averaged over the scale x flip augmentations.

    The model is used as it is: put it in `eval()` mode first.

    Args:
        model: returns (B, K, h, w) logits at any stride.
        images: normalised (B, C, H, W) float tensor.
        mode: `"whole"` or `"slide"`.
        crop_size: slide window size, an int or (height, width); required for slide mode.
        stride: slide step, an int or (height, width); required for slide mode.
        flip: also run on the horizontally flipped input (flipped back before averaging).
        scales: input resize factors; each scale runs the chosen mode on the bilinearly resized image.
        out_size: (height, width) of the result; default the input size.
        align_corners: `align_corners` of every bilinear resize (input scaling and logits).
        window_batch: slide windows per forward pass.

    Returns:
        (B, K, H_out, W_out) softmax probabilities.
    """
    _check_images(images)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError(f"slide mode needs crop_size and stride, got crop_size={crop_size!r}, stride={stride!r}")
    scales = tuple(scales)
    if not scales or not all(isinstance(s, (int, float)) and s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales!r}")
    height, width = images.shape[-2:]
    size = _pair(out_size, "out_size") if out_size is not None else (height, width)
    if mode == "slide":  # validate the grid arguments before any forward pass
        slide_windows(height, width, crop_size, stride)  # type: ignore[arg-type]

    probs: torch.Tensor | None = None
    num_augs = 0
    for scale in scales:
        scaled = resize(images, _scaled_size(height, width, scale), align_corners=align_corners)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            if mode == "whole":
                logits = whole_inference(model, x, out_size=size, align_corners=align_corners)
            else:
                logits = slide_inference(model, x, crop_size, stride, align_corners, window_batch)  # type: ignore
                logits = resize(logits, size, align_corners=align_corners)
            p = F.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
            if flipped:
                p = p.flip(-1)
            probs = p if probs is None else probs + p
            num_augs += 1
    assert probs is not None
    return probs / num_augs if num_augs > 1 else probs


def predict_labels(
    model: nn.Module,
    images: torch.Tensor,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    out_size: int | Sequence[int] | None = None,
    align_corners: bool = False,
    window_batch: int = 8,
) -> torch.Tensor:
    """Class indices (B, H_out, W_out) int64: the argmax of `predict` with the same arguments."""
    probs = predict(
        model, images, mode=mode, crop_size=crop_size, stride=stride, flip=flip, scales=scales,
        out_size=out_size, align_corners=align_corners, window_batch=window_batch,
    )
    return probs.argmax(dim=1)
