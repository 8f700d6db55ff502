"""`seglab data check`: finds what would stop or spoil training on a dataset before training starts.

For each split it builds the dataset as training would (same layout, same options), counts the pairs, lists
images without masks, masks without images, names in split lists without files and empty files, then decodes a
sample of the pairs and reports undecodable files, colour masks, size mismatches and label values outside the
class range. The sampled masks give a class-frequency table. Conversions of images (grayscale, alpha, 16-bit)
are noted, not counted as problems. Every message names its files by their path relative to the dataset root the
report starts with (`images/train/00005.png`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.datasets import (
    DATASETS,
    IMAGE_CONVERSIONS,
    DatasetError,
    DatasetWarning,
    FolderPairs,
    build_dataset,
    dataset_arguments,
    read_image,
    read_mask,
    relative_path,
)

_CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass
class SplitCheck:
    """What `check_dataset` found in one split.

    Attributes:
        split: the split name as given.
        pairs: number of (image, mask) pairs found.
        sampled: number of pairs decoded.
        problems: one message per problem, naming the files.
        notes: conversions and observations that are not problems.
        pixel_counts: labelled pixels per class over the sampled masks (None when nothing was sampled).
        image_counts: sampled masks holding each class.
        ignored_pixels: pixels equal to the ignore index in the sampled masks.
    """

    split: str
    pairs: int = 0
    sampled: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pixel_counts: np.ndarray | None = None
    image_counts: np.ndarray | None = None
    ignored_pixels: int = 0


@dataclass
class CheckReport:
    """The result of `check_dataset`; `ok` is False when any split has a problem.

    Attributes:
        dataset: the dataset name.
        root: the dataset root.
        classes: class names (empty when they could not be read).
        ignore_index: the label value of unlabeled pixels.
        reduce_zero_label: whether labels are shifted as ADE20K's.
        splits: one entry per split checked.
    """

    dataset: str
    root: str
    classes: tuple[str, ...] = ()
    ignore_index: int = 255
    reduce_zero_label: bool = False
    splits: list[SplitCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f"[{s.split}] {p}" for s in self.splits for p in s.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """The report as text: splits, problems, notes and the class-frequency table."""
        lines = [(f"dataset {self.dataset} at {self.root}: {len(self.classes)} classes, "
                  f"reduce_zero_label={self.reduce_zero_label}, ignore_index={self.ignore_index}")]
        for s in self.splits:
            lines.append(f"  split {s.split}: {s.pairs} image/mask pairs, {s.sampled} decoded and checked")
        problems, notes = self.problems, [f"[{s.split}] {n}" for s in self.splits for n in s.notes]
        if notes:
            lines.append("notes:")
            lines += [f"  - {n}" for n in notes]
        table = self.frequency_table()
        if table:
            lines.append(table)
        if problems:
            lines.append(f"problems ({len(problems)}):")
            lines += ["  - " + p.replace("\n", "\n    ") for p in problems]
            lines.append(f"FAILED: {len(problems)} problem(s)")
        else:
            lines.append("OK: no problems found")
        return "\n".join(lines)

    def frequency_table(self) -> str:
        """Per class and split: percent of the labelled pixels, and masks holding the class (sampled masks)."""
        counted = [s for s in self.splits if s.pixel_counts is not None]
        if not counted or not self.classes:
            return ""
        width = max(12, *(len(c) for c in self.classes))
        header = f"  {'id':>3}  {'class':<{width}}" + "".join(f"  {s.split[:20]:>20}" for s in counted)
        lines = ["class frequency in the sampled masks (% of labelled pixels, masks holding the class):", header]
        for k, name in enumerate(self.classes):
            cells = []
            for s in counted:
                total = int(s.pixel_counts.sum())
                share = 100.0 * s.pixel_counts[k] / total if total else 0.0
                cells.append(f"  {f'{share:6.2f}% {int(s.image_counts[k]):>6}':>20}")
            lines.append(f"  {k:>3}  {name:<{width}}" + "".join(cells))
        cells = []
        for s in counted:
            total = int(s.pixel_counts.sum()) + s.ignored_pixels
            share = 100.0 * s.ignored_pixels / total if total else 0.0
            cells.append(f"  {f'{share:6.2f}% of all':>20}")
        lines.append(f"  {'':>3}  {f'ignored ({self.ignore_index})':<{width}}" + "".join(cells))
        return "\n".join(lines)


def _default_splits(name: str, root: Path, options: dict[str, Any]) -> list[str]:
    if name in DATASETS:
        return list(DATASETS[name].check_splits)
    images = root / options.get("img_dir", "images")
    found = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    return found or ["train", "val"]


def _sample_indices(count: int, samples: int) -> list[int]:
    """`samples` indices spread evenly over `range(count)` (all of them for `samples <= 0`)."""
    if samples <= 0 or samples >= count:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, samples).round().astype(int).tolist()))


def _first(paths: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" ... ({len(paths)} in all)" if len(paths) > limit else "")


def _check_split(dataset: FolderPairs, check: SplitCheck, samples: int) -> None:
    """Fills `check` from an opened split: empty files, then decoding and labels of the sampled pairs."""

    def rel(path: Path) -> str:
        return relative_path(path, dataset.root)

    check.pairs = len(dataset)
    check.problems += dataset.index.problems  # these name their files relative to the root already
    empty = [p for pair in dataset.samples for p in pair if os.path.getsize(p) == 0]
    if empty:
        check.problems.append(f"{len(empty)} empty file(s) (0 bytes): {_first([rel(p) for p in empty])}")
    num_classes, ignore = dataset.num_classes, dataset.ignore_index
    pixel_counts = np.zeros(num_classes, dtype=np.int64)
    image_counts = np.zeros(num_classes, dtype=np.int64)
    undecodable: list[str] = []
    out_of_range: dict[int, list[str]] = {}
    converted: dict[str, list[str]] = {}
    empty_set = set(empty)
    indices = _sample_indices(len(dataset), samples)
    for i in indices:
        img_path, ann_path = dataset.samples[i]
        if img_path in empty_set or ann_path in empty_set:
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DatasetWarning)
                image = read_image(img_path)
            for w in caught:
                kind = next((k for k, text in IMAGE_CONVERSIONS.items() if text in str(w.message)), None)
                if kind is not None:
                    converted.setdefault(kind, []).append(rel(img_path))
            mask = dataset.reduce_labels(read_mask(ann_path)).numpy()
        except DatasetError as e:  # the message names the file by its full path
            undecodable.append(str(e).replace(str(img_path), rel(img_path)).replace(str(ann_path), rel(ann_path)))
            continue
        if mask.shape != tuple(image.shape[-2:]):
            check.problems.append(f"mask {rel(ann_path)} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
                                  f"{rel(img_path)} is {image.shape[1]}x{image.shape[2]}")
        labelled = mask[mask != ignore]
        bad = labelled[(labelled < 0) | (labelled >= num_classes)]
        for value in np.unique(bad).tolist():
            out_of_range.setdefault(int(value), []).append(rel(ann_path))
        counts = np.bincount(labelled[(labelled >= 0) & (labelled < num_classes)], minlength=num_classes)
        pixel_counts += counts
        image_counts += counts > 0
        check.ignored_pixels += int(mask.size - labelled.size)
    check.sampled = len(indices)
    check.problems += undecodable
    if out_of_range:
        stored = " after reduce_zero_label" if dataset.reduce_zero_label else ""
        shown = "; ".join(f"{v} in {_first(paths, 3)}" for v, paths in sorted(out_of_range.items())[:10])
        hint = ""
        if not dataset.reduce_zero_label and max(out_of_range) == num_classes:
            hint = " (labels look 1-based: set reduce_zero_label if 0 means 'unlabeled')"
        check.problems.append(f"label values{stored} outside 0..{num_classes - 1} (ignore {ignore} allowed): "
                              f"{shown}{hint}")
    for kind, paths in converted.items():
        check.notes.append(f"{len(paths)} sampled image(s) {IMAGE_CONVERSIONS[kind]} (first: {paths[0]})")
    unseen = [dataset.classes[k] for k in np.flatnonzero(image_counts == 0)]
    if unseen and indices:
        check.notes.append(f"{len(unseen)} class(es) absent from the sampled masks: {_first(unseen, 10)}")
    check.pixel_counts, check.image_counts = pixel_counts, image_counts


def check_dataset(
    source: str | Path,
    dataset: str | None = None,
    splits: Sequence[str] | None = None,
    samples: int = 100,
    options: dict[str, Any] | None = None,
) -> CheckReport:
    """Checks a dataset's layout, pairing, files and labels; see the module docstring.

    Args:
        source: a run config (`.yaml`: its `data` section gives the dataset, root, splits and options) or a
            dataset root folder.
        dataset: the dataset name for a folder (default `folder`); for a config, replaces `data.dataset`.
        splits: the splits to check; default a config's train and val splits, a public dataset's train and val,
            or every split folder of a `folder` root.
        samples: pairs decoded per split, spread evenly (0 or less: all of them).
        options: further `build_dataset` keyword arguments (they win over a config's).
    """
    source = Path(source)
    kwargs: dict[str, Any] = {}
    if source.is_file() and source.suffix in _CONFIG_SUFFIXES:
        from seglab.config import load_config

        data = load_config(source).data
        name, root = dataset or data.dataset, Path(data.root)
        kwargs["ignore_index"] = data.ignore_index
        if data.reduce_zero_label:
            kwargs["reduce_zero_label"] = True
        kwargs.update(data.options)
        splits = list(splits or [data.train_split, data.val_split])
    elif source.is_dir():
        name, root = dataset or "folder", source
    else:
        raise DatasetError(f"{source} is neither a run config (.yaml) nor a dataset folder")
    kwargs.update(options or {})
    splits = list(splits or _default_splits(name, root, kwargs))
    report = CheckReport(dataset=name, root=str(root))
    root, known = dataset_arguments(name, root, splits[0], **kwargs)  # what the report says before any split opens
    report.root, report.classes = str(root), tuple(known.get("classes") or ())
    report.ignore_index = known.get("ignore_index", report.ignore_index)
    report.reduce_zero_label = known.get("reduce_zero_label", report.reduce_zero_label)
    for split in dict.fromkeys(splits):  # a config's train and val split may be one split
        check = SplitCheck(split)
        report.splits.append(check)
        try:
            opened = build_dataset(name, root, split, skip_unpaired=True, **kwargs)
        except DatasetError as e:  # a layout error names folders and files under the root: shorten them likewise
            check.problems.append(str(e).replace(f"{root}{os.sep}", ""))
            continue
        report.root, report.classes = str(opened.root), opened.classes
        report.ignore_index, report.reduce_zero_label = opened.ignore_index, opened.reduce_zero_label
        _check_split(opened, check, samples)
    return report
