"""Segmentation datasets: image/mask pairs read from folders, with errors that name the file and the fix.

The generic layout ("folder pairs") is the one of ADE20K and of most mmsegmentation datasets:

    root/
      dataset.yaml                      classes (required unless passed), palette (optional)
      images/<split>/**/<stem><img_suffix>
      annotations/<split>/**/<stem><ann_suffix>

An image and a mask belong together when their paths below `<split>/` are equal once their suffixes are
removed. Masks hold class indices (L- or P-mode PNG, read as indices, never as colours); `ignore_index` marks
unlabeled pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from seglab.tools.visualize import make_palette

_META_FILES = ("dataset.yaml", "dataset.yml", "dataset.json")
_META_KEYS = ("classes", "palette", "name", "source")
_INDEX_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


class DatasetError(ValueError):
    """A dataset that cannot be read as given; the message names the file and what was expected."""


def _layout_help(
    img_dir: str, ann_dir: str, split: str, img_suffixes: Sequence[str], ann_suffix: str, ignore_index: int
) -> str:
    return (
        "expected layout:\n"
        "  ROOT/dataset.yaml            (classes: [...], optional palette: [[r, g, b], ...])\n"
        f"  ROOT/{img_dir}/{split}/NAME{{{','.join(img_suffixes)}}}\n"
        f"  ROOT/{ann_dir}/{split}/NAME{ann_suffix}   (class indices, {ignore_index} = ignore)"
    )


def read_dataset_meta(root: str | Path) -> dict[str, Any] | None:
    """The contents of `root/dataset.yaml` (or `.yml` / `.json`), checked; None when there is none.

    Keys: `classes` (list of names, required), `palette` (one [r, g, b] per class), `name`, `source`.
    """
    root = Path(root)
    path = next((root / n for n in _META_FILES if (root / n).is_file()), None)
    if path is None:
        return None
    try:
        meta = yaml.safe_load(path.read_text())  # JSON is a subset of YAML
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot parse: {e}") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a mapping with a 'classes' list, got {type(meta).__name__}")
    unknown = sorted(set(meta) - set(_META_KEYS))
    if unknown:
        raise DatasetError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(_META_KEYS)}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{path}: 'classes' must be a non-empty list of class names, got {classes!r}")
    if meta.get("palette") is not None:
        _check_palette(meta["palette"], len(classes), str(path))
    return meta


def _check_palette(palette: Any, num_classes: int, where: str) -> list[tuple[int, int, int]]:
    ok = isinstance(palette, (list, tuple)) and all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette
    )
    if not ok:
        raise DatasetError(f"{where}: 'palette' must be a list of [r, g, b] with integers in 0..255")
    if len(palette) != num_classes:
        raise DatasetError(f"{where}: 'palette' has {len(palette)} colours for {num_classes} classes")
    return [tuple(c) for c in palette]


def _scan(directory: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Files below `directory` ending in one of `suffixes`, keyed by their relative path without the suffix."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            suffix = next((s for s in suffixes if name.endswith(s)), None)
            if suffix is None or name.startswith("."):
                continue
            path = Path(dirpath) / name
            key = path.relative_to(directory).as_posix()[: -len(suffix)]
            if key in found:
                raise DatasetError(f"{found[key]} and {path} have the same name; keep one of them")
            found[key] = path
    return found


def _list_names(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as a uint8 RGB (3, H, W) tensor; `DatasetError` when it cannot be decoded.

    Pixels are taken as stored (EXIF orientation is not applied, so they line up with the mask's pixels).
    """
    try:
        with Image.open(path) as pil:
            array = np.array(pil if pil.mode == "RGB" else pil.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def read_mask(path: str | Path) -> torch.Tensor:
    """A class-index mask file as an int64 (H, W) tensor.

    L- and P-mode PNGs give their stored indices (a palette is never applied); colour masks are refused.
    """
    try:
        with Image.open(path) as pil:
            if pil.mode not in _INDEX_MODES:
                raise DatasetError(
                    f"mask {path} is a {pil.mode}-mode image; masks must hold class indices (L- or P-mode PNG). "
                    "Convert colour masks to index masks first (one value per class, 255 = ignore)"
                )
            array = np.array(pil)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"cannot decode mask {path}: {e}") from None
    return torch.from_numpy(array.astype(np.int64, copy=False))


class FolderPairs(Dataset):
    """Image/mask pairs under `root/img_dir/split` and `root/ann_dir/split`, paired by name.

    `dataset[i]` is `{"image": uint8 (3, H, W), "mask": int64 (H, W), "path": str}`, passed through
    `transform(image, mask) -> (image, mask)` when one is given. Files are checked as they are read: a file
    that does not decode, a mask of another size than its image, or label values outside `0..K-1` (other than
    `ignore_index`) raise `DatasetError` naming the file.

    Args:
        root: dataset root.
        split: sub-folder of `img_dir` and `ann_dir` (e.g. `train`, `val`, `training`).
        classes: class names; default `classes` from `root/dataset.yaml`.
        palette: one (r, g, b) per class; default the yaml's `palette`, else `seglab.tools.visualize.make_palette`.
        img_dir: folder of images under `root`.
        ann_dir: folder of masks under `root`.
        img_suffixes: image file endings, tried in order (may include more than the extension).
        ann_suffix: mask file ending.
        reduce_zero_label: ADE20K's convention: label 0 ("other") becomes `ignore_index`, every other label v
            becomes v - 1 (the ignore value itself stays).
        ignore_index: label value of unlabeled pixels.
        transform: `transform(image, mask) -> (image, mask)`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        img_dir: str = "images",
        ann_dir: str = "annotations",
        img_suffixes: Sequence[str] = (".jpg", ".png"),
        ann_suffix: str = ".png",
        reduce_zero_label: bool = False,
        ignore_index: int = 255,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.transform = transform
        if isinstance(img_suffixes, str):
            img_suffixes = (img_suffixes,)
        layout = _layout_help(img_dir, ann_dir, split, img_suffixes, ann_suffix, ignore_index)
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist; {layout}")

        meta = read_dataset_meta(self.root)
        if classes is None:
            if meta is None:
                raise DatasetError(
                    f"no class names for {self.root}: pass classes=[...] or write {self.root / 'dataset.yaml'} "
                    "with 'classes: [name0, name1, ...]'"
                )
            classes = meta["classes"]
        self.classes = tuple(classes)
        if palette is None and meta is not None and len(meta.get("palette") or ()) == len(self.classes):
            palette = meta["palette"]
        if palette is None:
            palette = make_palette(len(self.classes))
        self.palette = _check_palette([[int(v) for v in c] for c in palette], len(self.classes), "palette")

        self.img_root = self.root / img_dir / split
        self.ann_root = self.root / ann_dir / split
        for directory, parent in ((self.img_root, self.root / img_dir), (self.ann_root, self.root / ann_dir)):
            if not directory.is_dir():
                available = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
                hint = f"; splits found: {', '.join(available)}" if available else ""
                raise DatasetError(f"missing folder {directory}{hint}; {layout}")
        images = _scan(self.img_root, tuple(img_suffixes))
        masks = _scan(self.ann_root, (ann_suffix,))
        if not images and not masks:
            raise DatasetError(
                f"split {split!r} is empty: no {'/'.join(img_suffixes)} files under {self.img_root} and no "
                f"{ann_suffix} files under {self.ann_root}; {layout}"
            )
        no_mask = sorted(set(images) - set(masks))
        no_image = sorted(set(masks) - set(images))
        if no_mask or no_image:
            problems = []
            if no_mask:
                problems.append(f"{len(no_mask)} image(s) in {self.img_root} without a mask "
                                f"(looked for NAME{ann_suffix} in {self.ann_root}): {_list_names(no_mask)}")
            if no_image:
                problems.append(f"{len(no_image)} mask(s) in {self.ann_root} without an image "
                                f"(looked for NAME{{{','.join(img_suffixes)}}} in {self.img_root}): "
                                f"{_list_names(no_image)}")
            raise DatasetError("; ".join(problems))
        self.samples: list[tuple[Path, Path]] = [(images[k], masks[k]) for k in sorted(images)]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, "
                f"classes={self.num_classes}, reduce_zero_label={self.reduce_zero_label}, "
                f"ignore_index={self.ignore_index})")

    def load_mask(self, path: str | Path) -> torch.Tensor:
        """Reads one mask, applies `reduce_zero_label` and checks its values against the class count."""
        mask = read_mask(path)
        if self.reduce_zero_label:
            ignored = mask == self.ignore_index
            mask = mask - 1
            mask[(mask == -1) | ignored] = self.ignore_index
        bad = (mask != self.ignore_index) & ((mask < 0) | (mask >= self.num_classes))
        if bad.any():
            values = torch.unique(mask[bad]).tolist()
            shown = ", ".join(map(str, values[:10])) + (" ..." if len(values) > 10 else "")
            hint = ""
            if not self.reduce_zero_label and max(values) == self.num_classes:
                hint = " (labels look 1-based: set reduce_zero_label=True if 0 means 'unlabeled')"
            stored = "after reduce_zero_label " if self.reduce_zero_label else ""
            raise DatasetError(
                f"mask {path} has label value(s) {shown} {stored}outside the valid range 0..{self.num_classes - 1} "
                f"for {self.num_classes} classes (ignore_index {self.ignore_index} is also allowed){hint}"
            )
        return mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        img_path, ann_path = self.samples[index]
        image = read_image(img_path)
        mask = self.load_mask(ann_path)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DatasetError(
                f"mask {ann_path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image {img_path} is "
                f"{image.shape[1]}x{image.shape[2]}; a mask must have its image's size"
            )
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "path": str(img_path)}


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    **kwargs: Any,
) -> FolderPairs:
    """A dataset by layout name.

    Args:
        name: `folder` (any folder-pairs root) or `shapes` (a root written by `generate_shapes`).
        root: dataset root.
        split: split folder name.
        transform: `transform(image, mask) -> (image, mask)`.
        **kwargs: further `FolderPairs` arguments.
    """
    if name == "folder":
        return FolderPairs(root, split, transform=transform, **kwargs)
    if name == "shapes":
        from seglab.data.synthetic import SHAPES_CLASSES, SHAPES_PALETTE

        if not Path(root).is_dir():
            raise DatasetError(
                f"shapes dataset root {root} does not exist; generate it with "
                f"`seglab data shapes --out {root}` (or seglab.data.generate_shapes)"
            )
        kwargs.setdefault("classes", SHAPES_CLASSES)
        kwargs.setdefault("palette", SHAPES_PALETTE)
        return FolderPairs(root, split, transform=transform, **kwargs)
    raise KeyError(f"unknown dataset {name!r}; available: folder, shapes")


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stacks samples into `{"image": (B, 3, H, W), "mask": (B, H, W), "path": [str]}`.

    All samples must have one size (use a transform that crops or pads, or `collate_list` for evaluation at
    the original sizes).
    """
    sizes = {tuple(s["image"].shape) for s in batch}
    mask_sizes = {tuple(s["mask"].shape) for s in batch}
    if len(sizes) > 1 or len(mask_sizes) > 1:
        raise DatasetError(
            f"cannot stack a batch of different sizes (images {sorted(sizes)}, masks {sorted(mask_sizes)}): "
            "use a transform with a fixed output size, batch size 1, or collate_list"
        )
    return {
        "image": torch.stack([s["image"] for s in batch]),
        "mask": torch.stack([s["mask"] for s in batch]),
        "path": [s["path"] for s in batch],
    }


def collate_list(batch: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Keeps each field as a list, for samples of different sizes."""
    return {key: [s[key] for s in batch] for key in ("image", "mask", "path")}
