"""Dataset converters: the preparation steps between a public download and the layouts `build_dataset` reads.

- Cityscapes: `*_gtFine_labelIds.png` -> `*_gtFine_labelTrainIds.png` (34 label ids -> 19 train ids, others 255),
  the table of cityscapesScripts' `labels.py`.
- Pascal VOC aug: SBD's `dataset/cls/*.mat` -> `VOC2012/SegmentationClassAug/*.png`, plus `aug.txt` and
  `trainaug.txt`, as mmseg's `tools/dataset_converters/voc_aug.py` writes them.
- COCO-Stuff 164k: `stuffthingmaps` PNGs (ids 0..181, 255 unlabeled) -> `*_labelTrainIds.png` (0..170, 255), and
  COCO-Stuff 10k: `annotations/*.mat` -> `images/{train2014,test2014}` + `annotations/.../*_labelTrainIds.png`
  (1..171, 0 unlabeled), the id maps of mmseg's `coco_stuff164k.py` / `coco_stuff10k.py` converters.
- Cityscapes instances: `*_gtFine_instanceIds.png` -> a COCO instances JSON (`cityscapes_to_coco`), as
  mmdetection's `tools/dataset_converters/cityscapes.py` writes it, for `seglab.data.coco_instances.CocoInstances`.

Masks are written as L-mode PNGs (one byte of class index a pixel), each file atomically. Every semantic mask
converter takes `workers` to spread files over processes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.checkpoint import atomic_write
from seglab.data.coco_instances import coco_annotations, encode_instance_masks, write_coco_json
from seglab.data.datasets import DatasetError, read_mask, read_split_file

# (name, label id, train id) of every Cityscapes label, from cityscapesScripts `helpers/labels.py`;
# train id 255 is ignored in training and evaluation.
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
)  # fmt: skip

# NOTE: the 0-based ids of the 11 COCO thing classes that were never annotated (1-based 12, 26, 29, 30, 45, 66,
# 68, 69, 71, 83, 91). COCO-Stuff's 182 ids minus these are the 171 classes, numbered in order; this gives
# exactly the `clsID_to_trID` tables of mmseg's converters.
COCO_STUFF_UNUSED_IDS: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_NUM_IDS = 182


def cityscapes_lut() -> np.ndarray:
    """A (256,) uint8 table from Cityscapes label id to train id; 255 for every id not trained on."""
    lut = np.full(256, 255, dtype=np.uint8)
    for _, label_id, train_id in CITYSCAPES_LABELS:
        lut[label_id] = train_id
    return lut


def coco_stuff_lut(variant: str = "164k") -> np.ndarray:
    """A (256,) uint8 table from COCO-Stuff id to train id.

    Args:
        variant: `164k`: stuffthingmaps ids 0..181 -> 0..170, 255 (and any unused id) -> 255; `10k`: the
            `.mat` ids 1..182 -> 1..171, 0 (and any unused id) -> 0, the value `reduce_zero_label` ignores.
    """
    used = np.array([i for i in range(COCO_STUFF_NUM_IDS) if i not in COCO_STUFF_UNUSED_IDS])
    if variant == "164k":
        lut = np.full(256, 255, dtype=np.uint8)
        lut[used] = np.arange(len(used))
    elif variant == "10k":
        lut = np.zeros(256, dtype=np.uint8)
        lut[used + 1] = np.arange(len(used)) + 1
    else:
        raise ValueError(f"unknown COCO-Stuff variant {variant!r}; valid: 164k, 10k")
    return lut


def _write_png(path: Path, mask: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(mask.astype(np.uint8)).save(tmp, format="PNG"))


def remap_mask(src: str | Path, dst: str | Path, lut: np.ndarray) -> None:
    """Writes mask `src` with every value v replaced by `lut[v]` to `dst` (an L-mode PNG)."""
    mask = read_mask(src).numpy()
    if mask.size and (mask.min() < 0 or mask.max() >= len(lut)):
        raise DatasetError(f"mask {src} has values up to {mask.max()}; the id table covers 0..{len(lut) - 1}")
    _write_png(Path(dst), lut[mask])


def _run(function: Callable, items: Sequence, workers: int) -> None:
    """Calls `function(item)` for every item, in `workers` processes when more than one."""
    if workers <= 1 or len(items) < 2:
        for item in items:
            function(item)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(function, items, chunksize=max(1, len(items) // (8 * workers))):
            pass


def _remap_pair(pair: tuple[Path, Path], lut: np.ndarray) -> None:
    remap_mask(pair[0], pair[1], lut)


@dataclass
class ConversionResult:
    """What a converter wrote.

    Attributes:
        written: files written, per kind (e.g. `masks`, `images`, `lists`).
        counts: number of entries per output list or split.
    """

    written: dict[str, list[Path]]
    counts: dict[str, int]

    def summary(self) -> str:
        parts = [f"{len(paths)} {kind}" for kind, paths in self.written.items()]
        parts += [f"{name}: {count}" for name, count in self.counts.items()]
        return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------- Cityscapes
def convert_cityscapes(root: str | Path, workers: int = 1) -> ConversionResult:
    """Writes `*_gtFine_labelTrainIds.png` next to every `*_gtFine_labelIds.png` under `root/gtFine`.

    Args:
        root: the Cityscapes root (holding `gtFine/` and `leftImg8bit/`), or `gtFine/` itself.
        workers: processes to use.
    """
    root = Path(root)
    gt = root / "gtFine" if (root / "gtFine").is_dir() else root
    sources = sorted(gt.rglob("*_gtFine_labelIds.png"))
    if not sources:
        raise DatasetError(f"no *_gtFine_labelIds.png files under {gt}; expected ROOT/gtFine/{{train,val,test}}/"
                           "CITY/NAME_gtFine_labelIds.png (from gtFine_trainvaltest.zip)")
    pairs = [(p, p.with_name(p.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))) for p in sources]
    _run(partial(_remap_pair, lut=cityscapes_lut()), pairs, workers)
    splits = {}
    for src, _ in pairs:
        split = src.relative_to(gt).parts[0]
        splits[split] = splits.get(split, 0) + 1
    return ConversionResult({"masks": [dst for _, dst in pairs]}, splits)


# ---------------------------------------------------------------------------------------------------- VOC aug
def read_sbd_mask(path: str | Path) -> np.ndarray:
    """The class-index mask (uint8) of an SBD `cls/*.mat` file: its `GTcls.Segmentation` field."""
    from scipy.io import loadmat

    try:
        data = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except (ValueError, OSError, TypeError) as e:
        raise DatasetError(f"cannot read {path} as a MATLAB file: {e}") from None
    gt = data.get("GTcls")
    if gt is None or not hasattr(gt, "Segmentation"):
        keys = sorted(k for k in data if not k.startswith("__"))
        raise DatasetError(f"{path} has no GTcls.Segmentation (variables: {', '.join(keys)}); expected an SBD "
                           "dataset/cls/*.mat file")
    return np.asarray(gt.Segmentation).astype(np.uint8)


def _convert_sbd(pair: tuple[Path, Path]) -> None:
    _write_png(pair[1], read_sbd_mask(pair[0]))


def _find_voc(devkit: Path) -> Path:
    for candidate in (devkit / "VOC2012", devkit):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise DatasetError(f"no VOC 2012 under {devkit}: expected {devkit}/VOC2012/ImageSets/Segmentation/"
                       "{train,val}.txt (from VOCtrainval_11-May-2012.tar)")


def _find_sbd(sbd: Path) -> Path:
    for candidate in (sbd / "dataset", sbd / "benchmark_RELEASE" / "dataset", sbd):
        if (candidate / "cls").is_dir():
            return candidate
    raise DatasetError(f"no SBD under {sbd}: expected {sbd}/dataset/cls/*.mat and dataset/{{train,val}}.txt "
                       "(benchmark_RELEASE from benchmark.tgz)")


def _write_list(path: Path, names: Iterable[str]) -> None:
    text = "".join(f"{name}\n" for name in names)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def convert_voc_aug(devkit: str | Path, sbd: str | Path, out_dir: str | Path | None = None,
                    workers: int = 1) -> ConversionResult:
    """Converts SBD's masks to PNG and writes the VOC-aug split lists, as mmseg's `voc_aug.py`.

    Writes `SegmentationClassAug/NAME.png` for every `cls/NAME.mat`, and in `VOC2012/ImageSets/Segmentation/`:
    `aug.txt`, the SBD train + val names minus VOC train and val (what `pascal_voc_aug` reads after `train.txt`;
    9118 names for the full data), and `trainaug.txt`, VOC train + SBD train + val minus VOC val (10582).

    Args:
        devkit: `VOCdevkit` (holding `VOC2012/`) or `VOC2012/` itself.
        sbd: SBD's `benchmark_RELEASE/` (holding `dataset/cls/`) or `dataset/` itself.
        out_dir: where the PNGs go; default `VOC2012/SegmentationClassAug`.
        workers: processes to use.
    """
    voc, sbd_root = _find_voc(Path(devkit)), _find_sbd(Path(sbd))
    out = Path(out_dir) if out_dir is not None else voc / "SegmentationClassAug"
    sources = sorted((sbd_root / "cls").glob("*.mat"))
    if not sources:
        raise DatasetError(f"no .mat files in {sbd_root / 'cls'}")
    lists = voc / "ImageSets" / "Segmentation"
    sbd_names = read_split_file(sbd_root / "train.txt") + read_split_file(sbd_root / "val.txt")
    voc_train, voc_val = read_split_file(lists / "train.txt"), read_split_file(lists / "val.txt")
    pairs = [(p, out / f"{p.stem}.png") for p in sources]
    _run(_convert_sbd, pairs, workers)
    # sorted: mmseg writes these set differences in arbitrary order
    aug = sorted(set(sbd_names) - set(voc_train) - set(voc_val))
    trainaug = sorted((set(voc_train) | set(sbd_names)) - set(voc_val))
    _write_list(lists / "aug.txt", aug)
    _write_list(lists / "trainaug.txt", trainaug)
    return ConversionResult({"masks": [dst for _, dst in pairs], "lists": [lists / "aug.txt", lists / "trainaug.txt"]},
                            {"aug.txt": len(aug), "trainaug.txt": len(trainaug)})


# ---------------------------------------------------------------------------------------------------- COCO-Stuff
def convert_coco_stuff_164k(root: str | Path, workers: int = 1) -> ConversionResult:
    """Writes `NAME_labelTrainIds.png` next to every stuffthingmaps `NAME.png` in `root/annotations/{train,val}2017`.

    Args:
        root: the COCO-Stuff 164k root (`images/` from train2017.zip / val2017.zip, `annotations/` from
            stuffthingmaps_trainval2017.zip).
        workers: processes to use.
    """
    root = Path(root)
    pairs, counts = [], {}
    for split in ("train2017", "val2017"):
        folder = root / "annotations" / split
        if not folder.is_dir():
            raise DatasetError(f"missing folder {folder}; expected ROOT/annotations/{{train2017,val2017}}/NAME.png "
                               "(stuffthingmaps_trainval2017.zip)")
        sources = sorted(p for p in folder.glob("*.png") if not p.name.endswith("_labelTrainIds.png"))
        pairs += [(p, p.with_name(f"{p.stem}_labelTrainIds.png")) for p in sources]
        counts[split] = len(sources)
    _run(partial(_remap_pair, lut=coco_stuff_lut("164k")), pairs, workers)
    return ConversionResult({"masks": [dst for _, dst in pairs]}, counts)


def read_coco_stuff_10k_mask(path: str | Path) -> np.ndarray:
    """The id mask (uint8, 0 = unlabeled, 1..182 = COCO-Stuff ids) of a COCO-Stuff 10k `.mat` file (`S`)."""
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
    except (ValueError, OSError, TypeError) as e:
        raise DatasetError(f"cannot read {path} as a MATLAB file: {e}") from None
    if "S" not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise DatasetError(f"{path} has no 'S' label map (variables: {', '.join(keys)})")
    return np.asarray(data["S"]).astype(np.uint8)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # no second copy of the image when the file system allows it
    except OSError:
        shutil.copyfile(src, dst)


def _convert_coco_10k(item: tuple[Path, Path, Path, Path], lut: np.ndarray) -> None:
    image_src, mat, image_dst, mask_dst = item
    _link_or_copy(image_src, image_dst)
    _write_png(mask_dst, lut[read_coco_stuff_10k_mask(mat)])


def convert_coco_stuff_10k(root: str | Path, workers: int = 1) -> ConversionResult:
    """Lays out COCO-Stuff 10k as mmseg's `coco_stuff10k.py`: `images/{train2014,test2014}/NAME.jpg` and
    `annotations/{train2014,test2014}/NAME_labelTrainIds.png`, from `imageLists/{train,test}.txt`.

    Images are hard-linked (copied where links are not possible).

    Args:
        root: the unpacked cocostuff-10k-v1.1 folder (`images/NAME.jpg`, `annotations/NAME.mat`,
            `imageLists/{train,test}.txt`).
        workers: processes to use.
    """
    root = Path(root)
    items, counts = [], {}
    for list_name, split in (("train", "train2014"), ("test", "test2014")):
        names = read_split_file(root / "imageLists" / f"{list_name}.txt")
        for name in names:
            image, mat = root / "images" / f"{name}.jpg", root / "annotations" / f"{name}.mat"
            for path in (image, mat):
                if not path.is_file():
                    raise DatasetError(f"{path} (listed in {root / 'imageLists' / f'{list_name}.txt'}) not found")
            items.append((image, mat, root / "images" / split / f"{name}.jpg",
                          root / "annotations" / split / f"{name}_labelTrainIds.png"))
        counts[split] = len(names)
    _run(partial(_convert_coco_10k, lut=coco_stuff_lut("10k")), items, workers)
    return ConversionResult({"images": [i[2] for i in items], "masks": [i[3] for i in items]}, counts)


# ------------------------------------------------------------------------------------------------- Cityscapes instances
# The 8 Cityscapes classes with instances that are evaluated (cityscapesScripts labels.py: hasInstances and not
# ignoreInEval), by Cityscapes label id; caravan (29) and trailer (30) have instances but are ignored in evaluation.
CITYSCAPES_INSTANCE_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (24, "person", "human"),
    (25, "rider", "human"),
    (26, "car", "vehicle"),
    (27, "truck", "vehicle"),
    (28, "bus", "vehicle"),
    (31, "train", "vehicle"),
    (32, "motorcycle", "vehicle"),
    (33, "bicycle", "vehicle"),
)
_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
_CITYSCAPES_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"


def cityscapes_to_coco(cityscapes_root: str | Path, split: str, out_json: str | Path) -> Path:
    """Converts Cityscapes fine instance annotations of one split to a COCO instances JSON; returns its path.

    Reads `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` and `gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png`.
    An instance-id pixel value v >= 1000 is instance `v % 1000` of Cityscapes label `v // 1000`; a value below
    1000 is a label id with no instance (a group, e.g. a crowd of people), which becomes an `iscrowd` annotation.
    Only the 8 `CITYSCAPES_INSTANCE_CATEGORIES` are kept, with their Cityscapes label ids as COCO category ids.
    Masks are compressed RLEs; `bbox` and `area` come from them. Image `file_name`s are `<city>/<stem>_leftImg8bit.png`,
    relative to `leftImg8bit/<split>` (pass that folder as `CocoInstances`' `image_dir`). This follows mmdetection's
    Cityscapes converter, which the Mask R-CNN and BPR Cityscapes setups use.
    """
    root = Path(cityscapes_root)
    image_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir} does not exist; expected the Cityscapes layout "
                           f"leftImg8bit/{split}/<city>/*{_CITYSCAPES_IMAGE_SUFFIX}")
    image_files = sorted(image_dir.glob(f"*/*{_CITYSCAPES_IMAGE_SUFFIX}"))
    if not image_files:
        raise DatasetError(f"no */*{_CITYSCAPES_IMAGE_SUFFIX} files below {image_dir}")
    known = np.array([c[0] for c in CITYSCAPES_INSTANCE_CATEGORIES])
    images, annotations = [], []
    for image_id, image_file in enumerate(image_files, start=1):
        stem = image_file.name[: -len(_CITYSCAPES_IMAGE_SUFFIX)]
        gt_file = gt_dir / image_file.parent.name / f"{stem}{_CITYSCAPES_INSTANCE_SUFFIX}"
        if not gt_file.is_file():
            raise DatasetError(f"image {image_file} has no instance annotation {gt_file}")
        with Image.open(gt_file) as pil:
            instance_map = np.asarray(pil).astype(np.int32)
        with Image.open(image_file) as pil:
            width, height = pil.size
        if instance_map.shape != (height, width):
            raise DatasetError(f"{gt_file} is {instance_map.shape[1]}x{instance_map.shape[0]} but its image "
                               f"{image_file} is {width}x{height}")
        values = np.unique(instance_map[instance_map >= known.min()])
        labels = np.where(values >= 1000, values // 1000, values)
        values, labels = values[np.isin(labels, known)], labels[np.isin(labels, known)]
        rles = encode_instance_masks(instance_map, values)
        annotations += coco_annotations(rles, labels.tolist(), (values < 1000).astype(int).tolist(), image_id,
                                        len(annotations) + 1)
        images.append({"id": image_id, "file_name": f"{image_file.parent.name}/{image_file.name}", "height": height,
                       "width": width})
    categories = [{"id": cid, "name": name, "supercategory": group}
                  for cid, name, group in CITYSCAPES_INSTANCE_CATEGORIES]
    info = {"description": f"Cityscapes {split} fine instances, converted by seglab", "source": str(root)}
    out = Path(out_json)
    write_coco_json({"info": info, "images": images, "annotations": annotations, "categories": categories}, out)
    return out
