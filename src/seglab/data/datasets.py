"""Segmentation datasets: image/mask pairs read from folders, with errors that name the file and the fix.

One reader, `FolderPairs`, serves every layout. It finds a split's pairs in one of two ways:

- by folder (ADE20K, Cityscapes, COCO-Stuff, the generic layout): every image below `root/img_dir/<split>` is
  paired with the mask below `root/ann_dir/<split>` whose path is equal once the suffixes are removed;
- by split list (Pascal VOC, Pascal Context): `split_file` names a text file of image names, one a line; image
  `root/img_dir/NAME<img_suffix>` goes with mask `root/ann_dir/NAME<ann_suffix>`. Several (list, mask folder)
  parts are concatenated, as mmseg's VOC-aug training set does.

The public datasets are `DatasetSpec` entries of `DATASETS`: the `FolderPairs` arguments of their on-disk
layouts, as data; `build_dataset(name, root, split)` builds any of them. Masks hold class indices (L- or P-mode
PNG, read as indices, never as colours); `ignore_index` marks unlabeled pixels.

The generic layout ("folder pairs"):

    root/
      dataset.yaml                      classes (required unless passed), palette (optional)
      images/<split>/**/<stem><img_suffix>
      annotations/<split>/**/<stem><ann_suffix>
"""

from __future__ import annotations

import inspect
import io
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from seglab.data import classes as known
from seglab.palette import make_palette

_META_FILES = ("dataset.yaml", "dataset.yml", "dataset.json")
_META_KEYS = ("classes", "palette", "name", "source")
_INDEX_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class DatasetError(ValueError):
    """A dataset that cannot be read as given; the message names the file and what was expected."""


class DatasetWarning(UserWarning):
    """A dataset file read with a conversion the user should know about (grayscale, alpha, 16-bit)."""


def _layout_help(
    img_dir: str,
    ann_dirs: Sequence[str],
    split: str,
    img_suffixes: Sequence[str],
    ann_suffix: str,
    ignore_index: int,
    split_files: Sequence[str] | None,
    with_meta: bool,
) -> str:
    lines = ["expected layout:"]
    if with_meta:
        lines.append("  ROOT/dataset.yaml            (classes: [...], optional palette: [[r, g, b], ...])")
    suffixes = f"{{{','.join(img_suffixes)}}}"
    if split_files:
        for split_file, ann_dir in zip(split_files, ann_dirs, strict=False):
            lines.append(f"  ROOT/{split_file}   (one image NAME a line)")
            lines.append(f"  ROOT/{img_dir}/NAME{suffixes}")
            lines.append(f"  ROOT/{ann_dir}/NAME{ann_suffix}   (class indices, {ignore_index} = ignore)")
    else:
        lines.append(f"  ROOT/{img_dir}/{split}/NAME{suffixes}")
        lines.append(f"  ROOT/{ann_dirs[0]}/{split}/NAME{ann_suffix}   (class indices, {ignore_index} = ignore)")
    return "\n".join(lines)


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


def relative_path(path: str | Path, root: str | Path) -> str:
    """`path` relative to the dataset `root` (POSIX separators), as messages name files; unchanged when outside it."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _alternatives(suffixes: Sequence[str]) -> str:
    """`.png`, or `{.jpg,.png}` for several endings."""
    return suffixes[0] if len(suffixes) == 1 else "{" + ",".join(suffixes) + "}"


# ---------------------------------------------------------------------------------------------------- decoding
def _decode_error(kind: str, path: str | Path, error: Exception, size: int | None = None) -> DatasetError:
    """The error for a file PIL could not read, saying whether it is empty or cut short (`size`: of an in-memory
    file; a path's is looked up)."""
    if size is None:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = None
    if size == 0:
        detail = "the file is empty (0 bytes)"
    elif "truncated" in str(error).lower() or "broken data stream" in str(error).lower():
        detail = f"the file is truncated ({size} bytes; {error}); copy or download it again"
    else:
        detail = str(error)
    return DatasetError(f"cannot decode {kind} {path}: {detail}")


def _is_sixteen_bit(pil: Image.Image) -> bool:
    """Whether the file stores 16 bits a channel (PIL reads 16-bit RGB(A) PNGs as 8-bit without saying so)."""
    for tile in pil.tile:
        rawmode = tile.args[0] if isinstance(tile.args, tuple) and tile.args else tile.args
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return pil.mode in _SIXTEEN_BIT_GRAY


# what `read_image` reports for each conversion it makes
IMAGE_CONVERSIONS = {
    "grayscale": "is grayscale: its channel is replicated to R, G and B",
    "alpha": "has an alpha channel: it is dropped (the colour channels are used as they are)",
    "16-bit": "has 16 bits a channel: values are scaled to 8 bits (v >> 8)",
}


@contextmanager
def _pixel_limit(max_pixels: int | None):
    """PIL's decompression-bomb guard as it is (None), or switched off while an image of at most `max_pixels`
    pixels (checked by the caller) is read. The guard is process-wide, so the switch is taken under a lock."""
    if max_pixels is None:
        yield
        return
    with _PIXEL_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


_PIXEL_LIMIT_LOCK = threading.Lock()


def read_image(path: str | Path, notes: set[str] | None = None, max_pixels: int | None = None) -> torch.Tensor:
    """An image file as a uint8 RGB (3, H, W) tensor; `DatasetError` when it cannot be decoded.

    Grayscale images get their channel replicated, an alpha channel is dropped, 16-bit data is scaled to 8 bits
    (the high byte, as PIL does for 16-bit RGB). Each such conversion is reported with a `DatasetWarning`. Pixels
    are taken as stored (EXIF orientation is not applied, so they line up with the mask's pixels).

    Args:
        path: image file.
        notes: conversions already reported; a conversion in it is not reported again, and one reported now is
            added (a dataset passes its own set, so each kind of conversion is noted once).
        max_pixels: read images of up to this many pixels (width x height), past PIL's decompression-bomb limit
            (PIL refuses images over 2 x `Image.MAX_IMAGE_PIXELS`, 179 M pixels by default); larger ones are an
            error. None keeps PIL's limit.
    """
    array, found = _decode(path, str(path), max_pixels, None)
    for kind in found:
        if notes is None or kind not in notes:
            warnings.warn(f"image {path} {IMAGE_CONVERSIONS[kind]} (noted once per dataset)", DatasetWarning,
                          stacklevel=2)
            if notes is not None:
                notes.add(kind)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def decode_image(data: bytes, name: str = "upload", max_pixels: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Encoded image bytes (PNG, JPEG, TIFF, ...) as `read_image` reads a file: a uint8 RGB (3, H, W) tensor, and
    the conversions made (keys of `IMAGE_CONVERSIONS`: grayscale, alpha, 16-bit). `DatasetError` naming `name`
    when the bytes are empty, cut short, not an image, or over `max_pixels` (width x height)."""
    if not data:
        raise DatasetError(f"cannot decode image {name}: it is empty (0 bytes)")
    array, found = _decode(io.BytesIO(data), name, max_pixels, len(data))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), found


def _decode(source, name: str, max_pixels: int | None, size: int | None) -> tuple[np.ndarray, list[str]]:
    """(H, W, 3) uint8 pixels of a file or file object, and the conversions made."""
    found: list[str] = []
    try:
        with _pixel_limit(max_pixels), Image.open(source) as pil:
            if max_pixels is not None and pil.width * pil.height > max_pixels:
                raise DatasetError(f"image {name} has {pil.width} x {pil.height} = {pil.width * pil.height} pixels, "
                                   f"more than max_pixels={max_pixels}")
            if _is_sixteen_bit(pil):
                found.append("16-bit")
            mode = pil.mode
            if mode == "F":
                raise DatasetError(f"image {name} holds 32-bit floats (mode F); save it as 8- or 16-bit RGB or gray")
            if mode in _SIXTEEN_BIT_GRAY:
                gray = np.clip(np.asarray(pil, dtype=np.int64), 0, 65535)
                gray = (gray >> 8).astype(np.uint8)  # the high byte: 65535 -> 255, 257 * k -> k
                array = np.repeat(gray[..., None], 3, axis=2)  # (H, W) -> (H, W, 3)
                found.append("grayscale")
            else:
                if mode in ("1", "L", "LA", "La"):
                    found.append("grayscale")
                if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in pil.info):
                    found.append("alpha")
                array = np.array(pil if mode == "RGB" else pil.convert("RGB"))
    except DatasetError:
        raise
    except Image.DecompressionBombError as e:
        raise DatasetError(f"image {name} is larger than PIL reads by default ({e}); to read it, allow its size: "
                           f"`seglab predict --max-pixels N` or read_image(..., max_pixels=N), N >= width x height"
                           ) from None
    except UnidentifiedImageError as e:
        if size is None:  # a file: its path is in PIL's message
            raise _decode_error("image", name, e) from None
        raise DatasetError(f"cannot decode image {name}: not an image format PIL reads (PNG, JPEG, TIFF, BMP, WebP, "
                           f"...; {size} bytes)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise _decode_error("image", name, e, size) from None
    return array, found


def read_mask(path: str | Path) -> torch.Tensor:
    """A class-index mask file as an int64 (H, W) tensor.

    L- and P-mode PNGs give their stored indices (a palette is never applied); 16-bit masks give their values;
    colour masks are refused.
    """
    try:
        with Image.open(path) as pil:
            if pil.mode not in _INDEX_MODES:
                hint = ""
                if pil.mode == "RGB":
                    rgb = np.asarray(pil)
                    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                        hint = " (its three channels are equal: save it as an L-mode image, Image.convert('L'))"
                raise DatasetError(
                    f"mask {path} is a {pil.mode}-mode image; masks must hold class indices (L- or P-mode PNG)"
                    f"{hint}. Convert colour masks to index masks first (one value per class, 255 = ignore)"
                )
            array = np.asarray(pil)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _decode_error("mask", path, e) from None
    return torch.from_numpy(array.astype(np.int64))


# ---------------------------------------------------------------------------------------------------- indexing
@dataclass
class SplitIndex:
    """The pairs of one split and the files that have no partner.

    Attributes:
        samples: (image, mask) paths, in order.
        images_without_masks: names of images (found in the folder or listed) whose mask file is absent.
        masks_without_images: names of masks in the mask folder without an image (folder layouts).
        listed_without_image: names in a split list whose image file is absent (list layouts).
        problems: one message per kind of unpaired file, naming the folders or list and the first names.
        sources: the folders or split-list files the pairs were read from.
    """

    samples: list[tuple[Path, Path]] = field(default_factory=list)
    images_without_masks: list[str] = field(default_factory=list)
    masks_without_images: list[str] = field(default_factory=list)
    listed_without_image: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def read_split_file(path: str | Path) -> list[str]:
    """Image names from a split list (one a line; blank lines skipped); `DatasetError` when it is missing."""
    path = Path(path)
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        found = f"; lists found in {path.parent}: {', '.join(siblings)}" if siblings else ""
        raise DatasetError(f"split list {path} not found{found}")
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise DatasetError(f"split list {path} is not a text file: {e}") from None


def _missing_folder(directory: Path, parent: Path, layout: str, with_splits: bool) -> DatasetError:
    hint = ""
    if with_splits:
        available = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        hint = f"; splits found: {', '.join(available)}" if available else ""
    return DatasetError(f"missing folder {directory}{hint}; {layout}")


def index_split(
    root: str | Path,
    split: str,
    img_dir: str = "images",
    ann_dir: str | Sequence[str] = "annotations",
    img_suffixes: Sequence[str] = (".jpg", ".png"),
    ann_suffix: str = ".png",
    split_file: str | Sequence[str] | None = None,
    layout: str = "",
) -> SplitIndex:
    """Finds the (image, mask) pairs of one split; see `FolderPairs` for the arguments.

    Raises `DatasetError` for a layout that cannot be read (a folder or split list missing, nothing found);
    files without a partner are recorded in the returned index, not raised.
    """
    root = Path(root)
    img_suffixes = (img_suffixes,) if isinstance(img_suffixes, str) else tuple(img_suffixes)
    ann_dirs = (ann_dir,) if isinstance(ann_dir, str) else tuple(ann_dir)
    index = SplitIndex()
    if split_file is None:
        if len(ann_dirs) != 1:
            raise DatasetError(f"several mask folders {list(ann_dirs)} need one split_file each")
        img_root, ann_root = root / img_dir / split, root / ann_dirs[0] / split
        for directory, parent in ((img_root, root / img_dir), (ann_root, root / ann_dirs[0])):
            if not directory.is_dir():
                raise _missing_folder(directory, parent, layout, with_splits=True)
        images, masks = _scan(img_root, img_suffixes), _scan(ann_root, (ann_suffix,))
        if not images and not masks:
            raise DatasetError(
                f"split {split!r} is empty: no {'/'.join(img_suffixes)} files under {img_root} and no "
                f"{ann_suffix} files under {ann_root}; {layout}"
            )
        index.sources = [str(img_root), str(ann_root)]
        index.samples = [(images[k], masks[k]) for k in sorted(images) if k in masks]
        index.images_without_masks = sorted(set(images) - set(masks))
        index.masks_without_images = sorted(set(masks) - set(images))
        # files are named by their path relative to the dataset root, the folders looked in the same way
        if index.images_without_masks:
            index.problems.append(
                f"{len(index.images_without_masks)} image(s) without a mask (looked for "
                f"{relative_path(ann_root, root)}/NAME{ann_suffix}): "
                f"{_list_names([relative_path(images[k], root) for k in index.images_without_masks])}"
            )
        if index.masks_without_images:
            index.problems.append(
                f"{len(index.masks_without_images)} mask(s) without an image (looked for "
                f"{relative_path(img_root, root)}/NAME{_alternatives(img_suffixes)}): "
                f"{_list_names([relative_path(masks[k], root) for k in index.masks_without_images])}"
            )
        return index

    split_files = (split_file,) if isinstance(split_file, str) else tuple(split_file)
    if len(split_files) != len(ann_dirs):
        raise DatasetError(
            f"{len(split_files)} split list(s) {list(split_files)} for {len(ann_dirs)} mask folder(s) "
            f"{list(ann_dirs)}: give one mask folder per list"
        )
    img_root = root / img_dir
    if not img_root.is_dir():
        raise _missing_folder(img_root, root, layout, with_splits=False)
    for list_template, ann_name in zip(split_files, ann_dirs, strict=True):
        list_path = root / list_template.replace("{split}", split)
        ann_root = root / ann_name
        if not ann_root.is_dir():
            raise _missing_folder(ann_root, root, layout, with_splits=False)
        try:
            names = read_split_file(list_path)
        except DatasetError as e:
            raise DatasetError(f"{e} (split {split!r}); {layout}") from None
        if not names:
            raise DatasetError(f"split list {list_path} is empty (split {split!r}); {layout}")
        index.sources.append(str(list_path))
        no_image, no_mask, no_mask_files = [], [], []
        for name in names:
            image = next((img_root / f"{name}{s}" for s in img_suffixes if (img_root / f"{name}{s}").is_file()), None)
            mask = ann_root / f"{name}{ann_suffix}"
            if image is None:
                no_image.append(name)
            elif not mask.is_file():
                no_mask.append(name)
                no_mask_files.append(relative_path(image, root))
            else:
                index.samples.append((image, mask))
        listed = relative_path(list_path, root)
        if no_image:
            images = relative_path(img_root, root)
            index.problems.append(
                f"{len(no_image)} name(s) listed in {listed} have no image: "
                f"{_list_names([f'{images}/{name}{_alternatives(img_suffixes)}' for name in no_image])}"
            )
        if no_mask:
            index.problems.append(
                f"{len(no_mask)} image(s) listed in {listed} without a mask (looked for "
                f"{relative_path(ann_root, root)}/NAME{ann_suffix}): {_list_names(no_mask_files)}"
            )
        index.listed_without_image += no_image
        index.images_without_masks += no_mask
    return index


# ---------------------------------------------------------------------------------------------------- dataset
class FolderPairs(Dataset):
    """Image/mask pairs of one split, found by folder or by split list (see the module docstring).

    `dataset[i]` is `{"image": uint8 (3, H, W), "mask": int64 (H, W), "path": str}`, passed through
    `transform(image, mask) -> (image, mask)` when one is given. Files are checked as they are read: a file
    that does not decode, a mask of another size than its image, or label values outside `0..K-1` (other than
    `ignore_index`) raise `DatasetError` naming the file.

    Args:
        root: dataset root.
        split: sub-folder of `img_dir` and `ann_dir` (e.g. `train`, `val`, `training`), or the name substituted
            for `{split}` in `split_file`.
        classes: class names; default `classes` from `root/dataset.yaml`.
        palette: one (r, g, b) per class; default the yaml's `palette`, else `seglab.tools.visualize.make_palette`.
        img_dir: folder of images under `root`.
        ann_dir: folder of masks under `root`; with `split_file` a sequence of them, one per list.
        img_suffixes: image file endings, tried in order (may include more than the extension).
        ann_suffix: mask file ending.
        split_file: split list(s) relative to `root` with `{split}` for the split name (e.g.
            `ImageSets/Segmentation/{split}.txt`); with it, images lie directly in `img_dir` and masks in
            `ann_dir`, and the pairs are the names listed. Several lists are concatenated in order.
        reduce_zero_label: ADE20K's convention: label 0 ("other") becomes `ignore_index`, every other label v
            becomes v - 1 (the ignore value itself stays).
        ignore_index: label value of unlabeled pixels.
        skip_unpaired: keep the pairs found when some files have no partner (they are listed in `self.index`)
            instead of raising `DatasetError`.
        transform: `transform(image, mask) -> (image, mask)`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        img_dir: str = "images",
        ann_dir: str | Sequence[str] = "annotations",
        img_suffixes: Sequence[str] = (".jpg", ".png"),
        ann_suffix: str = ".png",
        split_file: str | Sequence[str] | None = None,
        reduce_zero_label: bool = False,
        ignore_index: int = 255,
        skip_unpaired: bool = False,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.transform = transform
        if isinstance(img_suffixes, str):
            img_suffixes = (img_suffixes,)
        ann_dirs = (ann_dir,) if isinstance(ann_dir, str) else tuple(ann_dir)
        split_files = (split_file,) if isinstance(split_file, str) else split_file
        layout = _layout_help(img_dir, ann_dirs, split, img_suffixes, ann_suffix, ignore_index, split_files,
                              with_meta=classes is None)
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist; {layout}")

        meta = read_dataset_meta(self.root) if classes is None or palette is None else None
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

        self.index = index_split(self.root, split, img_dir, ann_dirs, img_suffixes, ann_suffix, split_files,
                                 layout)
        if self.index.problems and not skip_unpaired:
            raise DatasetError(f"in {self.root}: " + "; ".join(self.index.problems))
        if not self.index.samples:
            raise DatasetError("; ".join([f"split {split!r} of {self.root} has no image with a mask",
                                          *self.index.problems]))
        self.samples: list[tuple[Path, Path]] = self.index.samples
        self._notes: set[str] = set()  # image conversions already reported

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, "
                f"classes={self.num_classes}, reduce_zero_label={self.reduce_zero_label}, "
                f"ignore_index={self.ignore_index})")

    def reduce_labels(self, mask: torch.Tensor) -> torch.Tensor:
        """Applies `reduce_zero_label` (0 -> ignore, v -> v - 1, ignore stays) when it is set."""
        if not self.reduce_zero_label:
            return mask
        ignored = mask == self.ignore_index
        mask = mask - 1
        mask[(mask == -1) | ignored] = self.ignore_index
        return mask

    def load_mask(self, path: str | Path) -> torch.Tensor:
        """Reads one mask, applies `reduce_zero_label` and checks its values against the class count."""
        mask = self.reduce_labels(read_mask(path))
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
        image = read_image(img_path, notes=self._notes)
        mask = self.load_mask(ann_path)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DatasetError(
                f"mask {ann_path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image {img_path} is "
                f"{image.shape[1]}x{image.shape[2]}; a mask must have its image's size"
            )
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "path": str(img_path)}


# ---------------------------------------------------------------------------------------------------- public datasets
@dataclass(frozen=True)
class DatasetSpec:
    """A public dataset's on-disk layout and label convention: the `FolderPairs` arguments, as data.

    Args:
        classes: class names after `reduce_zero_label`.
        palette: one (r, g, b) per class.
        img_dir: image folder under the root.
        ann_dir: mask folder under the root.
        img_suffixes: image file endings.
        ann_suffix: mask file ending.
        reduce_zero_label: the dataset's convention (mmseg's value).
        split_file: split list template (`{split}` is the split name); None for folder-per-split layouts.
        split_aliases: split names accepted for the folder or list names (`train` for ADE20K's `training`).
        split_overrides: per split, `FolderPairs` arguments that replace the ones above (VOC-aug's `train`).
        root_names: folders the given root may hold instead of being the root itself (`VOC2012` in `VOCdevkit`).
        check_splits: the splits `seglab data check` looks at by default.
        source: where the files come from and how they were prepared (for documentation and messages).
    """

    classes: tuple[str, ...]
    palette: known.Palette
    img_dir: str
    ann_dir: str
    img_suffixes: tuple[str, ...]
    ann_suffix: str
    reduce_zero_label: bool = False
    split_file: str | None = None
    split_aliases: Mapping[str, str] = field(default_factory=dict)
    split_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    root_names: tuple[str, ...] = ()
    check_splits: tuple[str, ...] = ("train", "val")
    source: str = ""

    def split_name(self, split: str) -> str:
        """The folder or list name of `split` (its alias resolved)."""
        return self.split_aliases.get(split, split)

    def resolve_root(self, root: str | Path) -> Path:
        """`root`, or its sub-folder named in `root_names` when the layout lies there."""
        root = Path(root)
        if (root / self.img_dir).is_dir():
            return root
        for name in self.root_names:
            if (root / name / self.img_dir).is_dir():
                return root / name
        return root

    def arguments(self, split: str) -> dict[str, Any]:
        """`FolderPairs` keyword arguments (without root and transform) for `split`."""
        split = self.split_name(split)
        args = {
            "split": split,
            "classes": self.classes,
            "palette": self.palette,
            "img_dir": self.img_dir,
            "ann_dir": self.ann_dir,
            "img_suffixes": self.img_suffixes,
            "ann_suffix": self.ann_suffix,
            "split_file": self.split_file,
            "reduce_zero_label": self.reduce_zero_label,
        }
        args.update(self.split_overrides.get(split, {}))
        return args


_VOC_SPLIT_FILE = "ImageSets/Segmentation/{split}.txt"
_CONTEXT_SPLIT_FILE = "ImageSets/SegmentationContext/{split}.txt"

DATASETS: dict[str, DatasetSpec] = {
    "ade20k": DatasetSpec(
        classes=known.ADE20K_CLASSES, palette=known.ADE20K_PALETTE, img_dir="images", ann_dir="annotations",
        img_suffixes=(".jpg",), ann_suffix=".png", reduce_zero_label=True,
        split_aliases={"train": "training", "val": "validation"}, root_names=("ADEChallengeData2016",),
        source="ADEChallengeData2016.zip (SceneParsing); 0 = other, 1..150 = classes",
    ),
    "cityscapes": DatasetSpec(
        classes=known.CITYSCAPES_CLASSES, palette=known.CITYSCAPES_PALETTE, img_dir="leftImg8bit", ann_dir="gtFine",
        img_suffixes=("_leftImg8bit.png",), ann_suffix="_gtFine_labelTrainIds.png",
        source="leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip; `seglab data convert cityscapes` writes "
               "the labelTrainIds masks",
    ),
    "pascal_voc": DatasetSpec(
        classes=known.PASCAL_VOC_CLASSES, palette=known.PASCAL_VOC_PALETTE, img_dir="JPEGImages",
        ann_dir="SegmentationClass", img_suffixes=(".jpg",), ann_suffix=".png", split_file=_VOC_SPLIT_FILE,
        root_names=("VOC2012",), source="VOCtrainval_11-May-2012.tar; P-mode masks, 255 = boundary (ignored)",
    ),
    # NOTE: mmseg trains VOC-aug on train.txt (SegmentationClass) followed by aug.txt (SegmentationClassAug).
    "pascal_voc_aug": DatasetSpec(
        classes=known.PASCAL_VOC_CLASSES, palette=known.PASCAL_VOC_PALETTE, img_dir="JPEGImages",
        ann_dir="SegmentationClass", img_suffixes=(".jpg",), ann_suffix=".png", split_file=_VOC_SPLIT_FILE,
        split_overrides={"train": {"ann_dir": ("SegmentationClass", "SegmentationClassAug"),
                                   "split_file": ("ImageSets/Segmentation/train.txt",
                                                  "ImageSets/Segmentation/aug.txt")}},
        root_names=("VOC2012",),
        source="VOC 2012 + SBD benchmark.tgz; `seglab data convert voc-aug` writes SegmentationClassAug and aug.txt",
    ),
    "pascal_context": DatasetSpec(
        classes=known.PASCAL_CONTEXT_CLASSES, palette=known.PASCAL_CONTEXT_PALETTE, img_dir="JPEGImages",
        ann_dir="SegmentationClassContext", img_suffixes=(".jpg",), ann_suffix=".png",
        split_file=_CONTEXT_SPLIT_FILE, root_names=("VOC2010",),
        source="VOC 2010 + trainval_merged.json (mmseg's pascal_context.py converter, Detail API); 0 = background",
    ),
    "pascal_context_59": DatasetSpec(
        classes=known.PASCAL_CONTEXT_59_CLASSES, palette=known.PASCAL_CONTEXT_59_PALETTE, img_dir="JPEGImages",
        ann_dir="SegmentationClassContext", img_suffixes=(".jpg",), ann_suffix=".png", reduce_zero_label=True,
        split_file=_CONTEXT_SPLIT_FILE, root_names=("VOC2010",),
        source="the Pascal Context masks with background (0) ignored",
    ),
    "coco_stuff164k": DatasetSpec(
        classes=known.COCO_STUFF_CLASSES, palette=known.COCO_STUFF_PALETTE, img_dir="images", ann_dir="annotations",
        img_suffixes=(".jpg",), ann_suffix="_labelTrainIds.png",
        split_aliases={"train": "train2017", "val": "val2017"}, root_names=("coco_stuff164k",),
        source="train2017.zip, val2017.zip, stuffthingmaps_trainval2017.zip; `seglab data convert coco-stuff` "
               "writes train ids 0..170, 255 = unlabeled",
    ),
    # NOTE: mmseg's coco-stuff10k config sets reduce_zero_label=True (its converter writes 0 = unlabeled and
    # train ids 1..171), while the 164k config does not (train ids 0..170, 255 = unlabeled).
    "coco_stuff10k": DatasetSpec(
        classes=known.COCO_STUFF_CLASSES, palette=known.COCO_STUFF_PALETTE, img_dir="images", ann_dir="annotations",
        img_suffixes=(".jpg",), ann_suffix="_labelTrainIds.png", reduce_zero_label=True,
        split_aliases={"train": "train2014", "val": "test2014", "test": "test2014"}, root_names=("coco_stuff10k",),
        source="cocostuff-10k-v1.1.zip; `seglab data convert coco-stuff --variant 10k` writes train ids 1..171, "
               "0 = unlabeled",
    ),
}

_OPTIONS = tuple(name for name in inspect.signature(FolderPairs.__init__).parameters
                 if name not in ("self", "root", "split", "transform"))


def list_datasets() -> list[str]:
    """Every name `build_dataset` accepts."""
    return ["folder", "shapes", *DATASETS]


def dataset_arguments(name: str, root: str | Path, split: str, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """The root and the `FolderPairs` keyword arguments (with `split`) that `build_dataset` uses.

    Args:
        name: a name from `list_datasets()`.
        root: dataset root.
        split: split name (aliases such as ADE20K's `train` for `training` resolved).
        **kwargs: `FolderPairs` arguments that replace the dataset's own.
    """
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        raise DatasetError(f"unknown option(s) {', '.join(map(repr, unknown))} for dataset {name!r}; "
                           f"valid: {', '.join(_OPTIONS)}")
    if name == "folder":
        return Path(root), {"split": split, **kwargs}
    if name == "shapes":
        from seglab.data.synthetic import SHAPES_CLASSES, SHAPES_PALETTE

        if not Path(root).is_dir():
            raise DatasetError(
                f"shapes dataset root {root} does not exist; generate it with "
                f"`seglab data shapes --out {root}` (or seglab.data.generate_shapes)"
            )
        return Path(root), {"split": split, "classes": SHAPES_CLASSES, "palette": SHAPES_PALETTE, **kwargs}
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    spec = DATASETS[name]
    return spec.resolve_root(root), {**spec.arguments(split), **kwargs}


def dataset_classes(name: str, root: str | Path, **kwargs: Any) -> tuple[tuple[str, ...], list] | None:
    """(class names, palette) of a dataset without reading its images: a public dataset's own, the shapes classes,
    or a folder's `dataset.yaml` (its palette, else `make_palette`); None when a folder has no `dataset.yaml`.
    `kwargs` are the run config's `data.options` (their `classes` / `palette` win)."""
    if name == "folder":
        meta = read_dataset_meta(Path(root)) if Path(root).is_dir() else None
        classes = kwargs.get("classes") or (meta or {}).get("classes")
        if not classes:
            return None
        palette = kwargs.get("palette") or (meta or {}).get("palette")
    elif name == "shapes":
        from seglab.data.synthetic import SHAPES_CLASSES, SHAPES_PALETTE

        classes, palette = kwargs.get("classes") or SHAPES_CLASSES, kwargs.get("palette") or SHAPES_PALETTE
    elif name in DATASETS:
        classes = kwargs.get("classes") or DATASETS[name].classes
        palette = kwargs.get("palette") or DATASETS[name].palette
    else:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    if palette is None or len(palette) != len(classes):
        palette = make_palette(len(classes))
    return tuple(classes), [tuple(int(v) for v in c) for c in palette]


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    **kwargs: Any,
) -> FolderPairs:
    """A dataset by layout name.

    Args:
        name: `folder` (any folder-pairs root), `shapes` (a root written by `generate_shapes`) or a public
            dataset of `DATASETS`: `ade20k`, `cityscapes`, `pascal_voc`, `pascal_voc_aug`, `pascal_context`,
            `pascal_context_59`, `coco_stuff164k`, `coco_stuff10k`.
        root: dataset root (for the public datasets also the folder holding it, e.g. `VOCdevkit`).
        split: split folder or list name; `train` / `val` work for every public dataset.
        transform: `transform(image, mask) -> (image, mask)`.
        **kwargs: `FolderPairs` arguments that replace the dataset's own (e.g. `reduce_zero_label`,
            `ignore_index`); an unknown one is a `DatasetError` listing the valid ones.
    """
    root, args = dataset_arguments(name, root, split, **kwargs)
    try:
        return FolderPairs(root, transform=transform, **args)
    except DatasetError as e:
        if name not in DATASETS:
            raise
        raise DatasetError(f"{e}\n{name}: {DATASETS[name].source}") from None  # how to get the files right


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
