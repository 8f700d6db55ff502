"""Robustness to natural corruptions (SegFormer Table 6, Cityscapes-C): the validation split corrupted on the fly
(`seglab.analyze.corruptions`) at five severities, mIoU per corruption and severity.

Deterministic given the seed: image i under corruption c at severity s draws from `corruption_rng(seed, i, c, s)`,
whatever the order or subset of the runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seglab.analyze.corruptions import CORRUPTIONS, check_corruptions, corrupt
from seglab.analyze.subject import Subject, image_array
from seglab.engine.run import evaluate

SEVERITY_LEVELS = (1, 2, 3, 4, 5)


def corruption_rng(seed: int, index: int, name: str, severity: int) -> np.random.Generator:
    """The generator of image `index` under corruption `name` at `severity`: independent of run order and subset."""
    return np.random.default_rng([seed, index, list(CORRUPTIONS).index(name), severity])


class CorruptedDataset:
    """`dataset` with every sample's image corrupted by `name` at `severity` (labels untouched)."""

    def __init__(self, dataset, name: str, severity: int, seed: int = 0, frost_dir: str | Path | None = None):
        check_corruptions([name], frost_dir)
        self.dataset, self.name, self.severity, self.seed, self.frost_dir = dataset, name, severity, seed, frost_dir
        self.classes = getattr(dataset, "classes", None)
        self.palette = getattr(dataset, "palette", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.dataset[index])
        rng = corruption_rng(self.seed, index, self.name, self.severity)
        corrupted = corrupt(image_array(sample["image"]), self.name, self.severity, rng, frost_dir=self.frost_dir)
        sample["image"] = torch.from_numpy(np.ascontiguousarray(corrupted)).permute(2, 0, 1).contiguous()
        return sample


def corruption_sweep(subject: Subject, dataset, names: Sequence[str], severities: Sequence[int] = SEVERITY_LEVELS,
                     seed: int = 0, frost_dir: str | Path | None = None, on_step=None) -> dict:
    """{"clean": mIoU, "mIoU": {name: [mIoU per severity]}, "mean": mean corruption mIoU, "relative": mean / clean}
    (fractions), with the config's inference mode. `on_step()` after each evaluation."""
    check_corruptions(list(names), frost_dir)
    bad = [s for s in severities if s not in SEVERITY_LEVELS]
    if bad:
        raise ValueError(f"severities must be in 1..5, got {bad}")
    num_classes = subject.model.num_classes
    clean = evaluate(subject.model, dataset, subject.config, num_classes, subject.device)["mIoU"]
    if on_step is not None:
        on_step()
    table: dict[str, list[float]] = {}
    for name in names:
        table[name] = []
        for severity in severities:
            corrupted = CorruptedDataset(dataset, name, severity, seed, frost_dir)
            table[name].append(evaluate(subject.model, corrupted, subject.config, num_classes, subject.device)["mIoU"])
            if on_step is not None:
                on_step()
    mean = float(np.mean([v for values in table.values() for v in values]))
    return {"clean": clean, "severities": list(severities), "mIoU": table, "mean": mean,
            "relative": mean / clean if clean > 0 else float("nan"), "seed": seed}


def plot_corruption_heatmap(results: dict[str, dict], out_png):
    """mIoU (%) per corruption (rows) and severity (columns), one panel per model, the clean mIoU in the title."""
    from matplotlib.figure import Figure

    from seglab.analyze.report import save_figure

    labels = list(results)
    names = list(next(iter(results.values()))["mIoU"])
    severities = next(iter(results.values()))["severities"]
    figure = Figure(figsize=(1.2 + 3.0 * len(labels), 0.9 + 0.32 * len(names)), dpi=100, layout="constrained")
    axes = figure.subplots(1, len(labels), squeeze=False)[0]
    for ax, label in zip(axes, labels, strict=True):
        r = results[label]
        values = 100 * np.array([r["mIoU"][n] for n in names])
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] < 55 else "black")
        ax.set_xticks(range(len(severities)), [str(s) for s in severities])
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names), fontsize=8)
        ax.set_xlabel("severity")
        ax.set_title(f"{label}\nclean {100 * r['clean']:.1f}, mean {100 * r['mean']:.1f}", fontsize=9)
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="mIoU (%)")
    return save_figure(figure, out_png)


def plot_corruption_examples(image: np.ndarray, names: Sequence[str], out_png, seed: int = 0,
                             frost_dir: str | Path | None = None):
    """One image under each corruption (rows) at severities 1, 3 and 5."""
    from matplotlib.figure import Figure

    from seglab.analyze.report import save_figure

    shown = (1, 3, 5)
    figure = Figure(figsize=(1.6 * (len(shown) + 1), 1.5 * len(names)), dpi=100, layout="constrained")
    axes = figure.subplots(len(names), len(shown) + 1, squeeze=False)
    for i, name in enumerate(names):
        axes[i][0].imshow(image)
        axes[i][0].set_ylabel(name, fontsize=7)
        for j, severity in enumerate(shown, start=1):
            axes[i][j].imshow(corrupt(image, name, severity, corruption_rng(seed, 0, name, severity),
                                      frost_dir=frost_dir))
            if i == 0:
                axes[i][j].set_title(f"severity {severity}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    return save_figure(figure, out_png)
