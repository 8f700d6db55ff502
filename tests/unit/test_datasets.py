"""FolderPairs: pairing, decoding, label checks and every error message a user can meet."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from seglab.data.datasets import (
    DatasetError,
    DatasetWarning,
    FolderPairs,
    build_dataset,
    collate,
    collate_list,
    read_image,
    read_mask,
)
from seglab.data.synthetic import SHAPES_CLASSES, generate_shapes

CLASSES = ["background", "cat", "dog"]


def _write_pair(root: Path, split: str, stem: str, size=(6, 8), labels=None, img_ext=".png", mask_size=None):
    """Writes an RGB image and an L-mode mask named `stem` (a relative path) under `root`."""
    if labels is not None and mask_size is None:
        size = np.asarray(labels).shape
    h, w = size
    img_path = root / "images" / split / f"{stem}{img_ext}"
    ann_path = root / "annotations" / split / f"{stem}.png"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_path)
    mh, mw = mask_size or size
    mask = np.asarray(labels, np.uint8) if labels is not None else (np.arange(mh * mw) % 3).reshape(mh, mw)
    Image.fromarray(mask.astype(np.uint8)).save(ann_path)
    return img_path, ann_path


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "dataset.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "palette": [[0, 0, 0], [1, 2, 3],
                                                                                       [4, 5, 6]]}))
    _write_pair(root, "train", "b")
    _write_pair(root, "train", "a", img_ext=".jpg")
    _write_pair(root, "val", "c")
    return root


def test_pairs_by_name_and_returns_tensors(root):
    ds = FolderPairs(root, "train")
    assert len(ds) == 2 and ds.num_classes == 3
    assert ds.classes == tuple(CLASSES) and ds.palette[1] == (1, 2, 3)
    sample = ds[0]
    assert sample["path"].endswith("a.jpg")  # sorted by name, .jpg and .png both found
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 6, 8)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (6, 8)
    expected = torch.from_numpy((np.arange(48) % 3).reshape(6, 8).astype(np.int64))
    assert torch.equal(sample["mask"], expected)
    png = np.asarray(Image.open(root / "images" / "train" / "b.png"))
    assert torch.equal(ds[1]["image"], torch.from_numpy(png.copy()).permute(2, 0, 1))


def test_nested_folders_and_multi_part_suffixes(tmp_path):
    # Cityscapes-like: <city>/<name>_leftImg8bit.png paired with <city>/<name>_gtFine_labelTrainIds.png
    root = tmp_path / "city"
    for city, name in (("aachen", "x_000001"), ("bochum", "y_000002")):
        (root / "leftImg8bit" / "train" / city).mkdir(parents=True)
        (root / "gtFine" / "train" / city).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "leftImg8bit" / "train" / city /
                                                            f"{name}_leftImg8bit.png")
        Image.fromarray(np.ones((4, 4), np.uint8)).save(root / "gtFine" / "train" / city /
                                                        f"{name}_gtFine_labelTrainIds.png")
        # other gtFine files must not be taken for masks
        Image.fromarray(np.full((4, 4), 30, np.uint8)).save(root / "gtFine" / "train" / city /
                                                            f"{name}_gtFine_labelIds.png")
    ds = FolderPairs(root, "train", classes=["a", "b"], img_dir="leftImg8bit", ann_dir="gtFine",
                     img_suffixes=("_leftImg8bit.png",), ann_suffix="_gtFine_labelTrainIds.png")
    assert len(ds) == 2
    assert ds[1]["path"].endswith("bochum/y_000002_leftImg8bit.png")
    assert ds[1]["mask"].unique().tolist() == [1]


def test_classes_from_json_and_default_palette(tmp_path):
    root = tmp_path / "j"
    _write_pair(root, "train", "a")
    (root / "dataset.json").write_text(json.dumps({"classes": CLASSES}))
    ds = FolderPairs(root, "train")
    assert ds.classes == tuple(CLASSES)
    assert len(ds.palette) == 3 and len(set(ds.palette)) == 3


def test_palette_mode_mask_is_read_as_indices(tmp_path):
    path = tmp_path / "p.png"
    indices = np.array([[0, 1], [2, 255]], np.uint8)
    mask = Image.frombytes("P", (2, 2), indices.tobytes())
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [7, 7, 7] * 253
    mask.putpalette(palette)
    mask.save(path)
    assert Image.open(path).mode == "P"
    assert read_mask(path).tolist() == indices.tolist()


def test_colour_mask_is_refused(root):
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "annotations" / "train" / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png is a RGB-mode image; masks must hold class indices"):
        FolderPairs(root, "train")[0]


def test_undecodable_image_names_the_file(root):
    (root / "images" / "train" / "b.png").write_bytes(b"not a png at all")
    ds = FolderPairs(root, "train")
    with pytest.raises(DatasetError, match=r"cannot decode image .*b\.png"):
        ds[1]


def test_undecodable_mask_names_the_file(root):
    (root / "annotations" / "train" / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=r"cannot decode mask .*b\.png"):
        FolderPairs(root, "train")[1]


def test_mask_size_mismatch_gives_both_sizes(root):
    _write_pair(root, "train", "b", size=(6, 8), mask_size=(5, 7))
    with pytest.raises(DatasetError, match=r"mask .*b\.png is 5x7 \(HxW\) but its image .*b\.png is 6x8"):
        FolderPairs(root, "train")[1]


def test_out_of_range_labels_name_values_and_range(root):
    _write_pair(root, "train", "b", labels=[[0, 1, 7, 9], [255, 2, 1, 0]])
    with pytest.raises(DatasetError, match=r"b\.png has label value\(s\) 7, 9 outside the valid range 0\.\.2"):
        FolderPairs(root, "train")[1]
    # 255 (ignore) alone is fine
    _write_pair(root, "train", "b", labels=[[0, 255], [2, 1]])
    assert FolderPairs(root, "train")[1]["mask"].tolist() == [[0, 255], [2, 1]]


def test_one_based_labels_suggest_reduce_zero_label(root):
    _write_pair(root, "train", "b", labels=[[1, 2], [3, 3]])
    with pytest.raises(DatasetError, match="reduce_zero_label=True"):
        FolderPairs(root, "train")[1]


def test_reduce_zero_label(root):
    _write_pair(root, "train", "b", labels=[[0, 1, 2], [3, 255, 1]])
    ds = FolderPairs(root, "train", reduce_zero_label=True)
    assert ds[1]["mask"].tolist() == [[255, 0, 1], [2, 255, 0]]


def test_unpaired_files_are_named(root):
    (root / "annotations" / "train" / "a.png").unlink()
    _write_pair(root, "train", "z")
    (root / "images" / "train" / "z.png").unlink()
    with pytest.raises(DatasetError) as info:
        FolderPairs(root, "train")
    message = str(info.value)
    assert message.startswith(f"in {root}: ")  # files named relative to the root
    assert "1 image(s) without a mask (looked for annotations/train/NAME.png): images/train/a." in message
    assert "1 mask(s) without an image (looked for images/train/NAME{.jpg,.png}): annotations/train/z.png" in message


def test_empty_split(root):
    (root / "images" / "test").mkdir()
    (root / "annotations" / "test").mkdir()
    with pytest.raises(DatasetError, match=r"split 'test' is empty: no \.jpg/\.png files under .*images/test"):
        FolderPairs(root, "test")


def test_missing_root_explains_the_layout(tmp_path):
    with pytest.raises(DatasetError) as info:
        FolderPairs(tmp_path / "nowhere", "train")
    message = str(info.value)
    assert "nowhere does not exist" in message
    assert "ROOT/images/train/NAME" in message and "ROOT/annotations/train/NAME.png" in message
    assert "dataset.yaml" in message


def test_missing_split_lists_the_splits_found(root):
    with pytest.raises(DatasetError, match=r"missing folder .*images/training; splits found: train, val"):
        FolderPairs(root, "training")


def test_missing_classes(tmp_path):
    root = tmp_path / "noyaml"
    _write_pair(root, "train", "a")
    with pytest.raises(DatasetError, match="no class names .* pass classes="):
        FolderPairs(root, "train")
    assert FolderPairs(root, "train", classes=CLASSES).num_classes == 3


def test_bad_dataset_yaml(root):
    (root / "dataset.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "colours": []}))
    with pytest.raises(DatasetError, match=r"unknown key\(s\) 'colours'; valid: classes, palette"):
        FolderPairs(root, "train")
    (root / "dataset.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "palette": [[0, 0, 0]]}))
    with pytest.raises(DatasetError, match="'palette' has 1 colours for 3 classes"):
        FolderPairs(root, "train")


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def test_transform_is_applied(root):
    def transform(image, mask):
        return image[:, :2, :2].float(), mask[:2, :2] + 10

    sample = FolderPairs(root, "train", transform=transform)[0]
    assert sample["image"].shape == (3, 2, 2) and sample["image"].dtype == torch.float32
    assert sample["mask"].min() >= 10


def test_build_dataset(tmp_path, root):
    assert len(build_dataset("folder", root, "train")) == 2
    shapes = generate_shapes(tmp_path / "shapes", 3, 1, size=32)
    ds = build_dataset("shapes", shapes, "train")
    assert ds.classes == SHAPES_CLASSES and len(ds) == 3
    with pytest.raises(DatasetError, match="seglab data shapes --out"):
        build_dataset("shapes", tmp_path / "absent", "train")
    with pytest.raises(KeyError, match="unknown dataset 'ade'; available: folder, shapes, ade20k"):
        build_dataset("ade", root, "train")
    with pytest.raises(DatasetError, match=r"unknown option\(s\) 'colours' for dataset 'folder'"):
        build_dataset("folder", root, "train", colours=[])


def test_collate_and_loader(tmp_path):
    shapes = generate_shapes(tmp_path / "shapes", 4, 1, size=24)
    loader = DataLoader(build_dataset("shapes", shapes, "train"), batch_size=2, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 24, 24) and batch["mask"].shape == (2, 24, 24)
    assert len(batch["path"]) == 2


def test_collate_of_different_sizes(root):
    _write_pair(root, "train", "b", size=(5, 5))
    ds = FolderPairs(root, "train")
    with pytest.raises(DatasetError, match="cannot stack a batch of different sizes"):
        collate([ds[0], ds[1]])
    listed = collate_list([ds[0], ds[1]])
    assert [tuple(m.shape) for m in listed["mask"]] == [(6, 8), (5, 5)]


# ---------------------------------------------------------------------------------------------------- decoding
def _png16(path: Path, array: np.ndarray) -> Path:
    """Writes a 16-bit PNG (gray (H, W) or RGB (H, W, 3)) byte by byte: PIL cannot write 16-bit RGB."""
    import struct
    import zlib

    h, w = array.shape[:2]
    colour_type = 2 if array.ndim == 3 else 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_grayscale_image_is_replicated_and_noted_once_per_dataset(root):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(gray).save(root / "images" / "train" / "a.jpg", quality=100)
    Image.fromarray(gray).save(root / "images" / "train" / "b.png")
    ds = FolderPairs(root, "train")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = ds[0]["image"], ds[1]["image"]
    notes = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(notes) == 1 and "a.jpg is grayscale: its channel is replicated" in notes[0]  # once, not per image
    assert first.shape == (3, 6, 8) and torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])
    assert torch.equal(second, torch.from_numpy(gray)[None].expand(3, 6, 8))


def test_rgba_image_drops_alpha(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the colours must still come through unblended
    Image.fromarray(rgba).save(tmp_path / "x.png")
    with pytest.warns(DatasetWarning, match="has an alpha channel: it is dropped"):
        image = read_image(tmp_path / "x.png")
    assert torch.equal(image, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))


def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path):
    gray = np.array([[0, 257, 25700], [65535, 511, 256]], np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    with pytest.warns(DatasetWarning) as caught:
        image = read_image(tmp_path / "g16.png")
    assert {"16 bits a channel", "grayscale"} <= {k for w in caught for k in ("16 bits a channel", "grayscale")
                                                  if k in str(w.message)}
    assert image[0].tolist() == [[0, 1, 100], [255, 1, 1]] and torch.equal(image[0], image[2])
    rgb = (np.arange(18, dtype=np.uint16).reshape(2, 3, 3) * 3000)
    with pytest.warns(DatasetWarning, match="16 bits a channel"):
        image = read_image(_png16(tmp_path / "rgb16.png", rgb))
    assert torch.equal(image, torch.from_numpy((rgb >> 8).astype(np.uint8)).permute(2, 0, 1))


def test_empty_and_truncated_files_are_named(root):
    (root / "images" / "train" / "b.png").write_bytes(b"")
    ds = FolderPairs(root, "train")
    with pytest.raises(DatasetError, match=r"cannot decode image .*b\.png: the file is empty \(0 bytes\)"):
        ds[1]
    png = (root / "annotations" / "train" / "a.png").read_bytes()
    (root / "annotations" / "train" / "a.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(DatasetError, match=r"cannot decode mask .*a\.png: the file is truncated"):
        ds[0]
    jpeg = root / "images" / "val" / "c.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(jpeg, quality=95)
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cannot decode image .*c\.jpg: the file is truncated"):
        read_image(jpeg)
    (root / "annotations" / "train" / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"cannot decode mask .*a\.png: the file is empty"):
        read_mask(root / "annotations" / "train" / "a.png")


def test_gray_mask_saved_as_rgb_gets_a_hint(tmp_path):
    Image.fromarray(np.ones((2, 2, 3), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DatasetError, match=r"RGB-mode image.*three channels are equal: save it as an L-mode"):
        read_mask(tmp_path / "m.png")


def test_sixteen_bit_mask_keeps_its_values(tmp_path):
    Image.fromarray(np.array([[0, 300], [2, 65535]], np.uint16)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[0, 300], [2, 65535]]


def test_folder_layout_with_a_split_list(root):
    # images directly in img_dir, names from a list (Pascal-style), on the generic reader
    for stem in ("x", "y", "z"):
        _write_pair(root, "flat", stem)
    (root / "lists").mkdir()
    (root / "lists" / "mine.txt").write_text("y\n\nx\n")
    ds = FolderPairs(root, "mine", img_dir="images/flat", ann_dir="annotations/flat", split_file="lists/{split}.txt")
    assert [p.stem for p, _ in ds.samples] == ["y", "x"]  # list order, blank lines skipped
    with pytest.raises(DatasetError, match=r"split list .*lists/other\.txt not found; lists found in .*: mine\.txt"):
        FolderPairs(root, "other", img_dir="images/flat", ann_dir="annotations/flat", split_file="lists/{split}.txt")
    with pytest.raises(DatasetError, match="1 split list.* for 2 mask folder"):
        FolderPairs(root, "mine", img_dir="images/flat", ann_dir=("a", "b"), split_file="lists/{split}.txt")


def test_skip_unpaired_keeps_the_pairs_and_lists_the_rest(root):
    (root / "annotations" / "train" / "a.png").unlink()
    ds = FolderPairs(root, "train", skip_unpaired=True)
    assert len(ds) == 1 and ds.index.images_without_masks == ["a"]
    (root / "annotations" / "train" / "b.png").unlink()
    with pytest.raises(DatasetError, match="split 'train' of .* has no image with a mask; 2 image"):
        FolderPairs(root, "train", skip_unpaired=True)
