"""Effective receptive fields (Luo et al., "Understanding the Effective Receptive Field in Deep Convolutional Neural
Networks", NeurIPS 2016; SegFormer, arXiv:2105.15203, Fig. 3).

For one output map (a backbone stage's features or the head's logits) the ERF is the absolute gradient, with
respect to the input pixels, of the map's centre location summed over its channels after a ReLU (the form of the
ERF tool released with RepLKNet, Ding et al. CVPR 2022, which later papers' ERF figures use: a plain channel sum, a
gradient of 1 at every channel's centre as Luo et al. place it, is constant after a LayerNorm with unit weight, so
its gradient vanishes); absolute values are averaged over the input channels and over the images. The mass radius
is the radius of the smallest disc around the input point under that centre location that holds a given share of
the map's total.

The backbone's stages are read with a forward hook on `model.backbone` (its `list[Tensor]` NCHW outputs, the
backbone contract); the head's output is the model's forward (for query-based heads the semantic logits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

MASS_SHARES = (0.5, 0.9)


@dataclass
class ReceptiveField:
    """One output's ERF: `grad` (H, W) mean absolute input gradient, `centre` the (row, col) input point under the
    output's centre location, `radius` share -> pixels holding that share of the mass, `stride` of the output."""

    name: str
    grad: np.ndarray
    centre: tuple[float, float]
    stride: float
    radius: dict[float, float] = field(default_factory=dict)


def output_centre(out_size: tuple[int, int], in_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[float, float]]:
    """The centre location (h // 2, w // 2) of an output map and the input point it covers (the middle of its
    cell, in input pixels)."""
    (h, w), (height, width) = out_size, in_size
    row, col = h // 2, w // 2
    return (row, col), ((row + 0.5) * height / h - 0.5, (col + 0.5) * width / w - 0.5)


def mass_radius(grad: np.ndarray, centre: tuple[float, float], share: float) -> float:
    """The smallest radius r (pixels) such that the pixels within r of `centre` hold `share` of `grad`'s total
    (0 for an all-zero map)."""
    total = float(grad.sum())
    if total <= 0:
        return 0.0
    rows, cols = np.indices(grad.shape)
    distance = np.hypot(rows - centre[0], cols - centre[1]).ravel()
    order = np.argsort(distance, kind="stable")
    cumulative = np.cumsum(grad.ravel()[order], dtype=np.float64)
    index = int(np.searchsorted(cumulative, share * total - 1e-12 * total))
    return float(distance[order][min(index, len(order) - 1)])


def model_outputs(model: nn.Module) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """`images -> {"stage1": ..., "stageN": ..., "head": logits}` for a seglab segmentation model: the backbone's
    outputs through a forward hook, the model's own forward for the head."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no `backbone`: the ERF reads the backbone's stage outputs")

    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: list[torch.Tensor] = []

        def hook(module, args, output):
            captured.clear()
            captured.extend(t for t in (output if isinstance(output, list | tuple) else [output])
                            if isinstance(t, torch.Tensor) and t.ndim == 4)

        handle = backbone.register_forward_hook(hook)
        try:
            logits = model(images)
        finally:
            handle.remove()
        return {**{f"stage{i + 1}": t for i, t in enumerate(captured)}, "head": logits}

    return run


def effective_receptive_fields(
    outputs: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: Iterable[torch.Tensor],
    shares: tuple[float, ...] = MASS_SHARES,
) -> dict[str, ReceptiveField]:
    """The ERF of every output of `outputs`, averaged over `images`.

    Args:
        outputs: normalised images (B, C, H, W) -> named (B, K, h, w) maps (`model_outputs(model)`, or any
            function, e.g. a single convolution).
        images: batches of normalised images, all of one size.
        shares: mass shares whose radii are reported.
    """
    sums: dict[str, torch.Tensor] = {}
    strides: dict[str, float] = {}
    centres: dict[str, tuple[float, float]] = {}
    count = 0
    size = None
    for batch in images:
        if size is not None and tuple(batch.shape[-2:]) != size:
            raise ValueError(f"ERF images must share one size: got {tuple(batch.shape[-2:])} after {size}")
        size = tuple(batch.shape[-2:])
        x = batch.detach().clone().requires_grad_(True)
        maps = outputs(x)
        names = list(maps)
        for k, name in enumerate(names):
            out = maps[name]
            (row, col), centres[name] = output_centre(tuple(out.shape[-2:]), size)
            strides[name] = size[0] / out.shape[-2]
            # the centre location of every channel and image at once: images do not interact in eval mode
            centre = torch.relu(out[:, :, row, col]).sum()
            (grad,) = torch.autograd.grad(centre, x, retain_graph=k < len(names) - 1, allow_unused=True)
            if grad is None:  # an output that does not depend on the input at all
                grad = torch.zeros_like(x)
            per_image = grad.abs().mean(1).sum(0).double()  # (H, W): channels averaged, images summed
            sums[name] = per_image if name not in sums else sums[name] + per_image
        count += batch.shape[0]
    if not count:
        raise ValueError("no images given for the ERF")
    results = {}
    for name, total in sums.items():
        grad = (total / count).numpy()
        radii = {s: mass_radius(grad, centres[name], s) for s in shares}
        results[name] = ReceptiveField(name, grad, centres[name], strides[name], radii)
    return results


def plot_erf_rows(rows: dict[str, dict[str, ReceptiveField]], out_png, log_scale: bool = True):
    """Heat maps side by side, one row per model (`rows`: model label -> its ERFs), each map scaled to its own
    maximum; `log10(1 + g / mean)` like SegFormer's and RepLKNet's figures when `log_scale`. Circles mark the 50 %
    and 90 % mass radii."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    from seglab.analyze.report import save_figure

    columns = max(len(r) for r in rows.values())
    figure = Figure(figsize=(2.4 * columns + 0.6, 2.5 * len(rows)), dpi=100, layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (label, fields) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(fields):
                ax.set_axis_off()
                continue
            erf = list(fields.values())[c]
            g = erf.grad
            shown = np.log10(1 + g / max(g.mean(), 1e-30)) if log_scale else g
            ax.imshow(shown / max(shown.max(), 1e-30), cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
            for share, style in zip(sorted(erf.radius), ("-", "--"), strict=False):
                ax.add_patch(Circle((erf.centre[1], erf.centre[0]), erf.radius[share], fill=False, color="black",
                                    linestyle=style, linewidth=0.8))
            radii = ", ".join(f"r{int(s * 100)} {erf.radius[s]:.0f}" for s in sorted(erf.radius))
            ax.set_title(f"{erf.name} (/{erf.stride:g})\n{radii} px", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    return save_figure(figure, out_png)
