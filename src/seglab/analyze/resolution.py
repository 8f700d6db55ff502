"""Test-resolution robustness (SegFormer Table 1c's question): mIoU as the inference size moves away from the size
the model was trained at, in whole-image and sliding-window inference.

Each scale multiplies the image as the config's test transform delivers it (the training scale where the config
is consistent), exactly as multi-scale testing does (`seglab.inference.predict(scales=(s,))`); predictions are
resized back to the label map, so every scale is scored on the same pixels. Slide inference uses windows of the
training crop (`eval.crop_size` when set) at `eval.stride` (default two thirds of the window).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from seglab.analyze.subject import Subject
from seglab.engine.run import evaluate

MODES = ("whole", "slide")


def slide_geometry(subject: Subject) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, stride) of the slide runs: the config's eval settings, else the training crop and 2/3 of it."""
    ev = subject.config.eval
    crop = tuple(ev.crop_size) if ev.crop_size else subject.input_size()
    stride = tuple(ev.stride) if ev.stride else tuple(max(1, (2 * c) // 3) for c in crop)
    return crop, stride  # type: ignore[return-value]


def resolution_sweep(subject: Subject, dataset, scales: Sequence[float], modes: Sequence[str] = MODES,
                     on_step=None) -> list[dict]:
    """One record per (mode, scale): {"mode", "scale", "mIoU", "aAcc", "IoU"} with metrics as fractions.

    `on_step()` is called after each evaluation (progress)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown inference mode(s) {unknown}; valid: {', '.join(MODES)}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
    num_classes = subject.model.num_classes
    crop, stride = slide_geometry(subject)
    records = []
    for mode in modes:
        for scale in scales:
            config = copy.deepcopy(subject.config)
            config.eval.mode, config.eval.scales, config.eval.flip = mode, (float(scale),), False
            if mode == "slide":
                config.eval.crop_size, config.eval.stride = crop, stride
            metrics = evaluate(subject.model, dataset, config, num_classes, subject.device)
            records.append({"mode": mode, "scale": float(scale), "mIoU": metrics["mIoU"], "aAcc": metrics["aAcc"],
                            "IoU": metrics["IoU"]})
            if on_step is not None:
                on_step()
    return records


def plot_resolution(results: dict[str, list[dict]], out_png):
    """mIoU against the test scale, one line per (model, mode); a dotted line at the training scale."""
    from matplotlib.figure import Figure

    from seglab.analyze.report import finish_line_plot

    figure = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
    ax = figure.subplots()
    styles = {"whole": "-", "slide": "--"}
    for index, (label, records) in enumerate(results.items()):
        colour = f"C{index % 10}"
        for mode in MODES:
            points = sorted((r["scale"], 100 * r["mIoU"]) for r in records if r["mode"] == mode)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, styles[mode], marker="o", color=colour, label=f"{label} ({mode})")
    ax.axvline(1.0, color="0.6", linestyle=":", linewidth=1)
    return finish_line_plot(figure, ax, out_png, "test scale (x the training size)", "mIoU (%)",
                            "mIoU against the inference resolution")
