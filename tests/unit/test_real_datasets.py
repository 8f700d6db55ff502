"""The public datasets in their real on-disk layouts (tiny trees), read through `build_dataset`, and the converters
that prepare them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from seglab.cli.main import main
from seglab.config import load_config
from seglab.data.classes import ADE20K_PALETTE, CITYSCAPES_CLASSES, COCO_STUFF_CLASSES, PASCAL_VOC_PALETTE
from seglab.data.converters import (
    CITYSCAPES_LABELS,
    cityscapes_lut,
    coco_stuff_lut,
    convert_cityscapes,
    convert_coco_stuff_10k,
    convert_coco_stuff_164k,
    convert_voc_aug,
)
from seglab.data.datasets import DATASETS, DatasetError, build_dataset, list_datasets
from seglab.engine.run import build_split

SIZE = (16, 16)


def _image(path: Path, size=SIZE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _mask(path: Path, values, size=SIZE, palette=None) -> np.ndarray:
    """Writes a mask cycling through `values` (L-mode, or P-mode with `palette`); returns the stored array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.resize(np.asarray(values, np.uint8), size[0] * size[1]).reshape(size)
    if palette is None:
        pil = Image.fromarray(array)
    else:
        pil = Image.new("P", (size[1], size[0]))
        pil.putdata(array.ravel().tolist())
        pil.putpalette([v for colour in palette for v in colour])
    pil.save(path)
    return array


def _lines(path: Path, names) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}\n" for n in names))


def test_every_public_dataset_is_listed_with_matching_classes_and_palette():
    assert list_datasets() == ["folder", "shapes", "ade20k", "cityscapes", "pascal_voc", "pascal_voc_aug",
                               "pascal_context", "pascal_context_59", "coco_stuff164k", "coco_stuff10k"]
    counts = {name: len(spec.classes) for name, spec in DATASETS.items()}
    assert counts == {"ade20k": 150, "cityscapes": 19, "pascal_voc": 21, "pascal_voc_aug": 21, "pascal_context": 60,
                      "pascal_context_59": 59, "coco_stuff164k": 171, "coco_stuff10k": 171}
    for spec in DATASETS.values():
        assert len(spec.palette) == len(spec.classes)
    assert {n: s.reduce_zero_label for n, s in DATASETS.items() if s.reduce_zero_label} == {
        "ade20k": True, "pascal_context_59": True, "coco_stuff10k": True}
    # spot checks against mmseg's tuples
    assert DATASETS["ade20k"].classes[:3] == ("wall", "building", "sky") and ADE20K_PALETTE[149] == (92, 0, 255)
    assert DATASETS["pascal_context"].palette == ADE20K_PALETTE[:60]
    assert DATASETS["pascal_context_59"].classes[0] == "aeroplane"
    assert DATASETS["pascal_context_59"].palette[0] == (180, 120, 120)
    assert PASCAL_VOC_PALETTE[15] == (192, 128, 128) and CITYSCAPES_CLASSES[-1] == "bicycle"
    assert COCO_STUFF_CLASSES[80] == "banner" and COCO_STUFF_CLASSES[-1] == "wood"


def test_ade20k(tmp_path):
    root = tmp_path / "ade" / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in range(1, 3):
            _image(root / "images" / split / f"{prefix}_{i:08d}.jpg", seed=i)
            _mask(root / "annotations" / split / f"{prefix}_{i:08d}.png", [0, 1, 150, 255, 75])
    ds = build_dataset("ade20k", tmp_path / "ade", "train")  # the parent folder works, `train` is `training`
    assert ds.root == root and ds.split == "training" and len(ds) == 2
    assert ds.num_classes == 150 and ds.reduce_zero_label and ds.classes[0] == "wall"
    mask = ds[0]["mask"]
    assert mask.flatten()[:5].tolist() == [255, 0, 149, 255, 74]  # 0 -> ignore, v -> v - 1
    assert ds[0]["image"].shape == (3, *SIZE)
    assert len(build_dataset("ade20k", root, "val")) == 2
    assert build_dataset("ade20k", root, "validation").split == "validation"
    # the convention can be switched off, and then 150 is out of range for 150 classes
    raw = build_dataset("ade20k", root, "train", reduce_zero_label=False)
    with pytest.raises(DatasetError, match="labels look 1-based"):
        raw[0]


def test_cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    for split, city in (("train", "aachen"), ("train", "bochum"), ("val", "frankfurt")):
        stem = f"{city}_000000_000019"
        _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        _mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", [0, 18, 255])
        _mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", [7, 33, 0])  # not a train-id mask
        _mask(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", [26])
    ds = build_dataset("cityscapes", root, "train")
    assert len(ds) == 2 and ds.num_classes == 19 and not ds.reduce_zero_label
    assert ds.palette[0] == (128, 64, 128)
    assert ds[1]["path"].endswith("bochum/bochum_000000_000019_leftImg8bit.png")
    assert sorted(ds[0]["mask"].unique().tolist()) == [0, 18, 255]
    assert len(build_dataset("cityscapes", root, "val")) == 1
    _mask(root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelTrainIds.png", [19])
    with pytest.raises(DatasetError, match=r"label value\(s\) 19 outside the valid range 0\.\.18"):
        build_dataset("cityscapes", root, "val")[0]


def _voc_tree(devkit: Path) -> Path:
    voc = devkit / "VOC2012"
    for i, name in enumerate(["2007_000032", "2007_000033", "2007_000039", "2008_000001"]):
        _image(voc / "JPEGImages" / f"{name}.jpg", seed=i)
    for name in ["2007_000032", "2007_000033", "2007_000039"]:
        _mask(voc / "SegmentationClass" / f"{name}.png", [0, 15, 255, 20], palette=PASCAL_VOC_PALETTE)
    _lines(voc / "ImageSets" / "Segmentation" / "train.txt", ["2007_000032", "2007_000033"])
    _lines(voc / "ImageSets" / "Segmentation" / "val.txt", ["2007_000039"])
    return voc


def test_pascal_voc_reads_palette_masks_as_indices_and_split_lists(tmp_path):
    voc = _voc_tree(tmp_path / "VOCdevkit")
    assert Image.open(voc / "SegmentationClass" / "2007_000032.png").mode == "P"
    ds = build_dataset("pascal_voc", tmp_path / "VOCdevkit", "train")
    assert ds.root == voc and len(ds) == 2 and ds.num_classes == 21
    assert [Path(s[0]).stem for s in ds.samples] == ["2007_000032", "2007_000033"]  # only the listed images
    assert ds[0]["mask"].flatten()[:4].tolist() == [0, 15, 255, 20]  # indices, not colours
    assert len(build_dataset("pascal_voc", voc, "val")) == 1
    with pytest.raises(DatasetError, match=r"split list .*ImageSets/Segmentation/test\.txt not found; lists "
                                           r"found in .*: train\.txt, val\.txt"):
        build_dataset("pascal_voc", voc, "test")


def test_split_list_entries_without_files_are_named(tmp_path):
    voc = _voc_tree(tmp_path / "VOCdevkit")
    _lines(voc / "ImageSets" / "Segmentation" / "train.txt", ["2007_000032", "2008_000001", "missing_one"])
    with pytest.raises(DatasetError) as info:
        build_dataset("pascal_voc", voc, "train")
    message = str(info.value)
    assert "1 name(s) listed in" in message and "train.txt have no image" in message and "missing_one" in message
    assert "1 image(s) listed in" in message and "without a mask" in message and "2008_000001" in message
    kept = build_dataset("pascal_voc", voc, "train", skip_unpaired=True)
    assert len(kept) == 1 and kept.index.listed_without_image == ["missing_one"]
    assert kept.index.images_without_masks == ["2008_000001"]


def test_pascal_voc_aug_concatenates_train_and_aug(tmp_path):
    voc = _voc_tree(tmp_path / "VOCdevkit")
    for name in ("2008_000002", "2008_000003"):
        _image(voc / "JPEGImages" / f"{name}.jpg")
        _mask(voc / "SegmentationClassAug" / f"{name}.png", [7])
    _lines(voc / "ImageSets" / "Segmentation" / "aug.txt", ["2008_000002", "2008_000003"])
    ds = build_dataset("pascal_voc_aug", voc, "train")
    assert len(ds) == 4
    assert [s[1].parent.name for s in ds.samples] == ["SegmentationClass"] * 2 + ["SegmentationClassAug"] * 2
    assert ds[3]["mask"].unique().tolist() == [7]
    assert len(build_dataset("pascal_voc_aug", voc, "val")) == 1  # val stays VOC's val.txt
    (voc / "ImageSets" / "Segmentation" / "aug.txt").unlink()
    with pytest.raises(DatasetError, match=r"(?s)split list .*aug\.txt not found.*seglab data convert voc-aug"):
        build_dataset("pascal_voc_aug", voc, "train")


@pytest.mark.parametrize("name, expected, classes", [
    ("pascal_context", [0, 1, 59, 255], 60),
    ("pascal_context_59", [255, 0, 58, 255], 59),
])
def test_pascal_context(tmp_path, name, expected, classes):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    for split, names in (("train", ["2008_000002", "2008_000003"]), ("val", ["2008_000008"])):
        for n in names:
            _image(voc / "JPEGImages" / f"{n}.jpg")
            _mask(voc / "SegmentationClassContext" / f"{n}.png", [0, 1, 59, 255])
        _lines(voc / "ImageSets" / "SegmentationContext" / f"{split}.txt", names)
    ds = build_dataset(name, tmp_path / "VOCdevkit", "train")
    assert ds.root == voc and len(ds) == 2 and ds.num_classes == classes
    assert ds[0]["mask"].flatten()[:4].tolist() == expected
    assert len(build_dataset(name, voc, "val")) == 1


def test_coco_stuff_164k(tmp_path):
    root = tmp_path / "coco_stuff164k"
    for split, names in (("train2017", ["000000000009", "000000000025"]), ("val2017", ["000000000139"])):
        for n in names:
            _image(root / "images" / split / f"{n}.jpg")
            _mask(root / "annotations" / split / f"{n}_labelTrainIds.png", [0, 170, 255])
            _mask(root / "annotations" / split / f"{n}.png", [181])  # the unconverted map is not read
    ds = build_dataset("coco_stuff164k", root, "train")
    assert ds.split == "train2017" and len(ds) == 2 and ds.num_classes == 171 and not ds.reduce_zero_label
    assert ds[0]["mask"].flatten()[:3].tolist() == [0, 170, 255]
    assert len(build_dataset("coco_stuff164k", tmp_path, "val")) == 1


def test_coco_stuff_10k_reduces_zero_label_as_mmseg(tmp_path):
    root = tmp_path / "coco_stuff10k"
    for split, names in (("train2014", ["COCO_train2014_000000000077"]), ("test2014", ["COCO_train2014_000000000078"])):
        for n in names:
            _image(root / "images" / split / f"{n}.jpg")
            _mask(root / "annotations" / split / f"{n}_labelTrainIds.png", [0, 1, 171])
    ds = build_dataset("coco_stuff10k", root, "train")
    assert ds.split == "train2014" and ds.reduce_zero_label and ds.num_classes == 171
    assert ds[0]["mask"].flatten()[:3].tolist() == [255, 0, 170]
    assert build_dataset("coco_stuff10k", root, "val").split == "test2014"


def test_unknown_dataset_and_option(tmp_path):
    with pytest.raises(KeyError, match="unknown dataset 'ade'; available: folder, shapes, ade20k, cityscapes"):
        build_dataset("ade", tmp_path, "train")
    with pytest.raises(DatasetError, match=r"unknown option\(s\) 'reduce_zero' for dataset 'ade20k'; valid: "
                                           r"classes, palette"):
        build_dataset("ade20k", tmp_path, "train", reduce_zero=True)


def test_missing_layout_names_the_folder(tmp_path):
    (tmp_path / "images" / "training").mkdir(parents=True)
    expected = r"(?s)missing folder .*annotations/training.*ROOT/images/training/NAME\{\.jpg\}"
    with pytest.raises(DatasetError, match=expected):
        build_dataset("ade20k", tmp_path, "train")


def test_run_config_options_reach_the_dataset(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _image(root / "images" / "training" / "a.jpg")
    _mask(root / "annotations" / "training" / "a.png", [0, 1])
    config_path = tmp_path / "run.yaml"
    config_path.write_text(f"data: {{dataset: ade20k, root: {tmp_path}}}\n")
    config = load_config(config_path)
    assert build_split(config, "train").reduce_zero_label  # `reduce_zero_label: false` keeps ADE20K's own
    config = load_config(config_path, ["data.options={reduce_zero_label: false, ignore_index: 0}"])
    ds = build_split(config, "train")
    assert not ds.reduce_zero_label and ds.ignore_index == 0


# ---------------------------------------------------------------------------------------------------- converters
def test_cityscapes_label_ids_to_train_ids(tmp_path):
    assert len(CITYSCAPES_LABELS) == 34 and [label[1] for label in CITYSCAPES_LABELS] == list(range(34))
    lut = cityscapes_lut()
    trained = {label_id: int(lut[label_id]) for label_id in range(34) if lut[label_id] != 255}
    assert trained == {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                       26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    folder = tmp_path / "cityscapes" / "gtFine" / "train" / "aachen"
    ids = np.arange(64, dtype=np.uint8).reshape(8, 8)  # every label id, and 30 values past them
    _mask(folder / "aachen_000000_000019_gtFine_labelIds.png", ids.ravel(), size=(8, 8))
    _mask(folder.parent.parent / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", [7], size=(8, 8))
    assert main(["data", "convert", "cityscapes", str(tmp_path / "cityscapes")]) == 0
    out = np.asarray(Image.open(folder / "aachen_000000_000019_gtFine_labelTrainIds.png"))
    expected = np.full(64, 255, np.uint8)
    for label_id, train_id in trained.items():
        expected[label_id] = train_id
    assert out.dtype == np.uint8 and np.array_equal(out, expected.reshape(8, 8))
    (folder / "aachen_000000_000019_gtFine_labelTrainIds.png").unlink()
    result = convert_cityscapes(tmp_path / "cityscapes", workers=2)  # the same through a process pool
    assert result.counts == {"train": 1, "val": 1} and len(result.written["masks"]) == 2
    out = np.asarray(Image.open(folder / "aachen_000000_000019_gtFine_labelTrainIds.png"))
    assert np.array_equal(out, expected.reshape(8, 8))


def _savemat_sbd(path: Path, segmentation: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    gt = {"Segmentation": segmentation, "Boundaries": np.zeros((1, 1)), "CategoriesPresent": np.array([1])}
    scipy.io.savemat(path, {"GTcls": gt})


def test_voc_aug_converter_writes_masks_and_lists(tmp_path):
    voc = _voc_tree(tmp_path / "VOCdevkit")
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    masks = {}
    for i, name in enumerate(["2007_000032", "2008_000002", "2008_000003", "2007_000039"]):
        masks[name] = (np.arange(64).reshape(8, 8) + i) % 21
        masks[name][0, 0] = 255
        _savemat_sbd(sbd / "cls" / f"{name}.mat", masks[name].astype(np.uint8))
        _image(voc / "JPEGImages" / f"{name}.jpg", size=(8, 8))
    _lines(sbd / "train.txt", ["2008_000002", "2007_000032"])
    _lines(sbd / "val.txt", ["2008_000003", "2007_000039"])
    code = main(["data", "convert", "voc-aug", str(tmp_path / "VOCdevkit"), str(tmp_path / "benchmark_RELEASE")])
    assert code == 0
    for name, mask in masks.items():
        png = Image.open(voc / "SegmentationClassAug" / f"{name}.png")
        assert png.mode == "L" and np.array_equal(np.asarray(png), mask)
    lists = voc / "ImageSets" / "Segmentation"
    # aug: SBD train + val minus VOC train (2007_000032, 2007_000033) and VOC val (2007_000039)
    assert (lists / "aug.txt").read_text() == "2008_000002\n2008_000003\n"
    # trainaug: VOC train + SBD train + val minus VOC val
    assert (lists / "trainaug.txt").read_text() == "2007_000032\n2007_000033\n2008_000002\n2008_000003\n"
    ds = build_dataset("pascal_voc_aug", tmp_path / "VOCdevkit", "train")
    assert [s[0].stem for s in ds.samples] == ["2007_000032", "2007_000033", "2008_000002", "2008_000003"]
    assert torch.equal(ds[2]["mask"], torch.from_numpy(masks["2008_000002"]).long())
    result = convert_voc_aug(tmp_path / "VOCdevkit", sbd, out_dir=tmp_path / "out")
    assert result.counts == {"aug.txt": 2, "trainaug.txt": 4} and len(list((tmp_path / "out").glob("*.png"))) == 4


def test_voc_aug_converter_refuses_a_mat_without_gtcls(tmp_path):
    _voc_tree(tmp_path / "VOCdevkit")
    sbd = tmp_path / "sbd" / "dataset"
    sbd.joinpath("cls").mkdir(parents=True)
    scipy.io.savemat(sbd / "cls" / "x.mat", {"GTinst": {"Segmentation": np.zeros((2, 2))}})
    _lines(sbd / "train.txt", ["x"])
    _lines(sbd / "val.txt", [])
    with pytest.raises(DatasetError, match=r"x\.mat has no GTcls\.Segmentation \(variables: GTinst\)"):
        convert_voc_aug(tmp_path / "VOCdevkit", tmp_path / "sbd")


# mmseg's clsID_to_trID tables (tools/dataset_converters/coco_stuff164k.py and coco_stuff10k.py), around every gap
MMSEG_164K = {0: 0, 10: 10, 12: 11, 24: 23, 26: 24, 27: 25, 30: 26, 43: 39, 45: 40, 64: 59, 66: 60, 69: 61, 71: 62,
              81: 72, 83: 73, 89: 79, 91: 80, 181: 170, 255: 255}
MMSEG_10K = {0: 0, 1: 1, 11: 11, 13: 12, 25: 24, 27: 25, 28: 26, 31: 27, 44: 40, 46: 41, 65: 60, 67: 61, 70: 62,
             72: 63, 82: 73, 84: 74, 90: 80, 92: 81, 182: 171}


def test_coco_stuff_id_maps():
    lut164, lut10 = coco_stuff_lut("164k"), coco_stuff_lut("10k")
    assert {k: int(lut164[k]) for k in MMSEG_164K} == MMSEG_164K
    assert {k: int(lut10[k]) for k in MMSEG_10K} == MMSEG_10K
    assert sorted(set(lut164[:182].tolist()) - {255}) == list(range(171))
    assert sorted(set(lut10[1:183].tolist()) - {0}) == list(range(1, 172))
    assert lut164[11] == 255 and lut10[12] == 0  # ids that were never annotated are ignored
    with pytest.raises(ValueError, match="unknown COCO-Stuff variant"):
        coco_stuff_lut("20k")


def test_coco_stuff_164k_converter(tmp_path):
    root = tmp_path / "coco"
    ids = [0, 11, 12, 181, 255, 90, 91, 45]
    for split in ("train2017", "val2017"):
        _mask(root / "annotations" / split / "000000000009.png", ids, size=(1, 8))
    assert main(["data", "convert", "coco-stuff", str(root)]) == 0
    out = np.asarray(Image.open(root / "annotations" / "train2017" / "000000000009_labelTrainIds.png"))
    assert out.ravel().tolist() == [0, 255, 11, 170, 255, 255, 80, 40]
    result = convert_coco_stuff_164k(root)  # a second run skips the *_labelTrainIds.png it wrote
    assert result.counts == {"train2017": 1, "val2017": 1}


def test_coco_stuff_10k_converter(tmp_path):
    src = tmp_path / "cocostuff-10k-v1.1"
    for name, values in (("COCO_train2014_000000000077", [0, 1, 13, 182]), ("COCO_train2014_000000000078", [92])):
        _image(src / "images" / f"{name}.jpg", size=(1, 4))
        src.joinpath("annotations").mkdir(exist_ok=True)
        scipy.io.savemat(src / "annotations" / f"{name}.mat",
                         {"S": np.resize(np.array(values, np.uint16), 4).reshape(1, 4)})
    _lines(src / "imageLists" / "train.txt", ["COCO_train2014_000000000077"])
    _lines(src / "imageLists" / "test.txt", ["COCO_train2014_000000000078"])
    assert main(["data", "convert", "coco-stuff", str(src), "--variant", "10k"]) == 0
    mask = np.asarray(Image.open(src / "annotations" / "train2014" / "COCO_train2014_000000000077_labelTrainIds.png"))
    assert mask.ravel().tolist() == [0, 1, 12, 171]
    assert (src / "images" / "test2014" / "COCO_train2014_000000000078.jpg").is_file()
    ds = build_dataset("coco_stuff10k", src, "train")
    assert ds[0]["mask"].ravel().tolist() == [255, 0, 11, 170]
    assert build_dataset("coco_stuff10k", src, "val")[0]["mask"].ravel().tolist() == [80] * 4  # 92 -> 81 -> 80
    result = convert_coco_stuff_10k(src)
    assert result.counts == {"train2014": 1, "test2014": 1}
