"""`seglab data check`: layout, pairing, files and labels of a dataset, reported with the files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from seglab.cli.main import main
from seglab.data.check import check_dataset
from seglab.data.datasets import DatasetError

CLASSES = ["background", "cat", "dog"]


def _pair(root: Path, split: str, stem: str, labels, image_size=None, image_mode="RGB") -> None:
    labels = np.asarray(labels, np.uint8)
    h, w = image_size or labels.shape
    for folder in ("images", "annotations"):
        (root / folder / split).mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(image_mode).save(root / "images" / split / f"{stem}.png")
    Image.fromarray(labels).save(root / "annotations" / split / f"{stem}.png")


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "dataset.yaml").write_text(yaml.safe_dump({"classes": CLASSES}))
    _pair(root, "train", "a", [[0, 0, 1, 1], [0, 0, 255, 255]])
    _pair(root, "train", "b", [[0, 0, 0, 0], [2, 2, 2, 2]])
    _pair(root, "val", "c", [[1, 1, 1, 1], [1, 1, 1, 2]])
    return root


def test_a_good_dataset_passes_with_counts_and_frequencies(root, capsys):
    report = check_dataset(root)
    assert report.ok and report.classes == tuple(CLASSES)
    train, val = report.splits
    assert (train.split, train.pairs, train.sampled) == ("train", 2, 2) and (val.split, val.pairs) == ("val", 1)
    assert train.pixel_counts.tolist() == [8, 2, 4] and train.image_counts.tolist() == [2, 1, 1]
    assert train.ignored_pixels == 2 and val.pixel_counts.tolist() == [0, 7, 1]
    assert any("1 class(es) absent from the sampled masks: background" in n for n in val.notes)
    text = report.format()
    assert "split train: 2 image/mask pairs" in text and text.rstrip().endswith("OK: no problems found")
    assert "cat" in text and " 14.29%" in text  # 2 of the 14 labelled train pixels
    assert main(["data", "check", str(root)]) == 0
    assert "class frequency in the sampled masks" in capsys.readouterr().out


def test_every_kind_of_problem_is_found_and_named(root, capsys):
    _pair(root, "train", "orphan_image", [[0]])
    (root / "annotations" / "train" / "orphan_image.png").unlink()
    _pair(root, "train", "orphan_mask", [[0]])
    (root / "images" / "train" / "orphan_mask.png").unlink()
    _pair(root, "train", "labels", [[0, 7], [9, 255]])
    _pair(root, "train", "sizes", [[0, 1]], image_size=(3, 3))
    _pair(root, "train", "empty", [[0]])
    (root / "images" / "train" / "empty.png").write_bytes(b"")
    _pair(root, "train", "colour", [[0]])
    Image.fromarray(np.array([[[10, 20, 30]]], np.uint8)).save(root / "annotations" / "train" / "colour.png")
    _pair(root, "train", "cut", [[0] * 64] * 64)
    data = (root / "annotations" / "train" / "cut.png").read_bytes()
    (root / "annotations" / "train" / "cut.png").write_bytes(data[: len(data) // 2])
    _pair(root, "val", "gray", [[1]], image_mode="L")

    report = check_dataset(root, samples=0)
    assert not report.ok
    problems = "\n".join(report.problems)
    # every file is named by its path relative to the dataset root (the report's first line names the root)
    assert "1 image(s) without a mask (looked for annotations/train/NAME.png): images/train/orphan_image.png" in problems
    assert ("1 mask(s) without an image (looked for images/train/NAME{.jpg,.png}): annotations/train/orphan_mask.png"
            in problems)
    assert "1 empty file(s) (0 bytes): images/train/empty.png" in problems
    assert "mask annotations/train/colour.png is a RGB-mode image" in problems
    assert "cannot decode mask annotations/train/cut.png: the file is truncated" in problems
    assert "mask annotations/train/sizes.png is 1x2 (HxW) but its image images/train/sizes.png is 3x3" in problems
    assert ("outside 0..2 (ignore 255 allowed): 7 in annotations/train/labels.png; 9 in annotations/train/labels.png"
            in problems)
    assert str(root) not in problems
    assert all(p.startswith("[train]") for p in report.problems)  # val has only a note
    assert any("images/val/gray.png" in n and "grayscale" in n for n in report.splits[1].notes)
    assert main(["data", "check", str(root), "--samples", "0"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 7 problem(s)" in out and f"dataset folder at {root}:" in out


def test_split_lists_and_layout_errors_name_files_relative_to_the_root(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    for name in ("x", "y"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(voc / "SegmentationClass" / "x.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("x\ny\ngone\n")
    report = check_dataset(tmp_path / "VOCdevkit", dataset="pascal_voc", splits=["train", "val"])
    train, val = report.splits
    assert report.root == str(voc) and train.pairs == 1
    assert train.problems == [
        "1 name(s) listed in ImageSets/Segmentation/train.txt have no image: JPEGImages/gone.jpg",
        ("1 image(s) listed in ImageSets/Segmentation/train.txt without a mask (looked for SegmentationClass/NAME.png): "
         "JPEGImages/y.jpg")]
    # a layout error (the val list is missing) names the list under the root, and the lists found
    assert len(val.problems) == 1 and val.problems[0].startswith(
        "split list ImageSets/Segmentation/val.txt not found; lists found in ImageSets/Segmentation: train.txt")

    # two files that differ only in their image suffix are one name: both named
    root = tmp_path / "twins"
    _pair(root, "train", "a", [[0]])
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(root / "images" / "train" / "a.jpg")
    (root / "dataset.yaml").write_text(yaml.safe_dump({"classes": CLASSES}))
    problems = check_dataset(root, splits=["train"]).splits[0].problems
    assert problems == ["images/train/a.jpg and images/train/a.png have the same name; keep one of them"]


def test_a_config_gives_dataset_root_and_splits(tmp_path, capsys):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for name in ("x", "y"):
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (voc / "SegmentationClass").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(np.full((4, 4), 15, np.uint8)).save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("x\ny\n")
    config = tmp_path / "voc.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": "pascal_voc", "root": str(tmp_path / "VOCdevkit")}}))
    report = check_dataset(config, samples=1)
    train, val = report.splits
    assert report.dataset == "pascal_voc" and len(report.classes) == 21
    assert train.pairs == 2 and train.sampled == 1 and train.pixel_counts[15] == 16 and not train.problems
    assert len(val.problems) == 1 and "split list" in val.problems[0] and "val.txt not found" in val.problems[0]
    assert main(["data", "check", str(config), "--split", "train"]) == 0
    assert "21 classes" in capsys.readouterr().out


def test_a_public_dataset_folder_with_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images" / split / "ADE_1.jpg")
        Image.fromarray(np.array([[0, 1, 150], [151, 1, 1]], np.uint8)).save(root / "annotations" / split / "ADE_1.png")
    report = check_dataset(tmp_path, dataset="ade20k")
    assert [s.split for s in report.splits] == ["train", "val"] and report.reduce_zero_label
    train = report.splits[0]
    assert train.pixel_counts[0] == 3 and train.pixel_counts[149] == 1 and train.ignored_pixels == 1
    assert "label values after reduce_zero_label outside 0..149 (ignore 255 allowed): 150 in" in train.problems[0]


def test_a_missing_source_or_layout(tmp_path):
    with pytest.raises(DatasetError, match="neither a run config"):
        check_dataset(tmp_path / "nothing")
    report = check_dataset(tmp_path, dataset="cityscapes")
    assert not report.ok and "missing folder" in report.splits[0].problems[0]
    assert main(["data", "check", str(tmp_path), "--dataset", "cityscapes"]) == 1
