"""The synthetic shapes generator: layout, determinism, variety, visibility, speed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from seglab.data.synthetic import (
    SHAPES_CLASSES,
    SHAPES_PALETTE,
    ShapesOptions,
    generate_shapes,
    render_shapes,
)


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _renders(n: int, seed: int = 0, size=64, options: ShapesOptions | None = None):
    return [render_shapes(np.random.default_rng([seed, i]), size, options) for i in range(n)]


def test_layout_and_metadata(tmp_path):
    root = generate_shapes(tmp_path / "shapes", n_train=3, n_val=2, size=48, seed=0)
    assert root == tmp_path / "shapes"
    for split, n in (("train", 3), ("val", 2)):
        images = sorted((root / "images" / split).iterdir())
        masks = sorted((root / "annotations" / split).iterdir())
        assert [p.name for p in images] == [f"{i:05d}.png" for i in range(n)]
        assert [p.name for p in masks] == [p.name for p in images]
        for img_path, ann_path in zip(images, masks, strict=True):
            with Image.open(img_path) as img, Image.open(ann_path) as ann:
                assert img.mode == "RGB" and img.size == (48, 48)
                assert ann.mode == "L" and ann.size == (48, 48)
                assert np.asarray(ann).max() < len(SHAPES_CLASSES)
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    assert meta["classes"] == list(SHAPES_CLASSES)
    assert meta["palette"] == [list(c) for c in SHAPES_PALETTE]
    assert len(SHAPES_PALETTE) == len(SHAPES_CLASSES)
    assert meta["source"]["generator"] == "shapes" and meta["source"]["seed"] == 0


def test_same_seed_is_byte_identical_and_seeds_differ(tmp_path):
    a = _digests(generate_shapes(tmp_path / "a", 4, 2, size=40, seed=7))
    b = _digests(generate_shapes(tmp_path / "b", 4, 2, size=40, seed=7))
    c = _digests(generate_shapes(tmp_path / "c", 4, 2, size=40, seed=8))
    assert a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in pngs if k.startswith("images/"))


def test_val_is_not_a_subset_of_train(tmp_path):
    root = generate_shapes(tmp_path / "s", n_train=12, n_val=6, size=32, seed=0)
    digests = _digests(root)
    train = {v for k, v in digests.items() if k.startswith("images/train/")}
    val = {v for k, v in digests.items() if k.startswith("images/val/")}
    assert len(train) == 12 and len(val) == 6 and not train & val


def test_image_i_does_not_depend_on_the_split_size(tmp_path):
    small = _digests(generate_shapes(tmp_path / "small", 2, 1, size=32, seed=3))
    large = _digests(generate_shapes(tmp_path / "large", 5, 3, size=32, seed=3))
    assert all(large[k] == v for k, v in small.items() if k.endswith(".png"))


def test_regenerating_replaces_a_previous_dataset_and_refuses_other_folders(tmp_path):
    root = generate_shapes(tmp_path / "s", 5, 2, size=32)
    generate_shapes(root, 2, 1, size=32)
    assert len(list((root / "images" / "train").iterdir())) == 2
    assert len(list((root / "annotations" / "val").iterdir())) == 1
    # an interrupted run (no dataset.yaml yet) is regenerated too
    (root / "dataset.yaml").unlink()
    (root / ".shapes-incomplete").touch()
    generate_shapes(root, 1, 1, size=32)
    assert (root / "dataset.yaml").is_file() and not (root / ".shapes-incomplete").exists()
    assert len(list((root / "images" / "train").iterdir())) == 1
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a shapes dataset"):
        generate_shapes(other, 1, 1, size=32)
    assert (other / "notes.txt").read_text() == "keep me"


def test_render_shapes_output_and_non_square_size():
    image, mask = render_shapes(np.random.default_rng(0), (40, 72))
    assert image.shape == (40, 72, 3) and image.dtype == np.uint8
    assert mask.shape == (40, 72) and mask.dtype == np.uint8
    assert (mask > 0).any()


def test_every_class_scale_and_several_shapes_per_image_occur():
    renders = _renders(60, size=96)
    seen = set()
    fractions = []
    multi_class = 0
    for _, mask in renders:
        classes = set(np.unique(mask).tolist())
        seen |= classes
        multi_class += len(classes - {0}) >= 2
        for cls in classes - {0}:
            labelled, count = ndimage.label(mask == cls)
            sizes = np.bincount(labelled.ravel())[1:]
            fractions.extend((sizes / mask.size).tolist())
    assert seen == set(range(len(SHAPES_CLASSES)))
    assert multi_class >= 20
    # shape diameters span 8%..60% of the side: areas from well under 1% to over 15% of the image
    assert min(fractions) < 0.005 and max(fractions) > 0.15


def test_backgrounds_are_textured_and_noisy():
    # without shapes' influence: a background pixel differs from its neighbours (noise), and images differ in
    # their background statistics (random gradients / textures)
    renders = _renders(12, size=64)
    stds = []
    for image, mask in renders:
        background = image[mask == 0].astype(np.float64)
        stds.append(background.std(axis=0).mean())
        horizontal = np.abs(np.diff(image.astype(np.int16), axis=1))[mask[:, 1:] == 0]
        assert horizontal.mean() > 1.0
    assert max(stds) - min(stds) > 5.0


def test_shapes_stay_visible_even_with_close_colours():
    # hardest case: every shape coloured close to what lies under it, one shape per image, no texture or noise
    options = ShapesOptions(max_shapes=1, close_colour_prob=1.0, texture=False, noise_sigma=0.0)
    for image, mask in _renders(30, seed=1, size=64, options=options):
        shape = mask > 0
        interior = ndimage.binary_erosion(shape, iterations=1)
        ring = ndimage.binary_dilation(shape, iterations=3) & ~ndimage.binary_dilation(shape, iterations=1)
        if interior.sum() < 4 or ring.sum() < 4:
            continue
        inside = image[interior].astype(np.float64).mean(axis=0)
        around = image[ring].astype(np.float64).mean(axis=0)
        assert np.linalg.norm(inside - around) > 0.5 * options.min_contrast


def test_later_shapes_occlude_earlier_ones():
    # large shapes overlap; where they do, the later shape's class borders the earlier one's directly
    options = ShapesOptions(max_shapes=6, min_scale=0.4, max_scale=0.6)
    touching = 0
    for _, mask in _renders(20, size=64, options=options):
        right = (mask[:, 1:] != mask[:, :-1]) & (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
        touching += bool(right.any())
    assert touching >= 10


# sha256 over the decoded pixels (images then masks, train then val, in file order) of
# generate_shapes(n_train=6, n_val=3, size=(80, 96), seed=11): the same on every machine (Intel or AMD, AVX2 or
# AVX-512), whatever the PNG encoder; a change here changes every shapes result, so regenerate it only on purpose
PIXEL_DIGEST = "5a7f13529846fd050c193280084359fff6fd8e6d30d0c5af23f3d3a9a5dd4ccb"


def test_generated_pixels_are_the_same_on_every_machine(tmp_path):
    root = generate_shapes(tmp_path / "s", 6, 3, size=(80, 96), seed=11)
    h = hashlib.sha256()
    for split in ("train", "val"):
        for kind in ("images", "annotations"):
            for path in sorted((root / kind / split).glob("*.png")):
                array = np.asarray(Image.open(path))
                h.update(f"{path.relative_to(root).as_posix()} {array.shape} {array.dtype}".encode())
                h.update(np.ascontiguousarray(array).tobytes())
    assert h.hexdigest() == PIXEL_DIGEST


def test_parallel_generation_writes_the_same_files(tmp_path, monkeypatch):
    import seglab.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "_CHUNK", 3)  # several jobs for a small set
    one = generate_shapes(tmp_path / "one", 10, 4, size=40, seed=3, workers=1)
    two = generate_shapes(tmp_path / "two", 10, 4, size=40, seed=3, workers=2)
    assert len(_digests(one)) == 2 * 14 + 1 and _digests(one) == _digests(two)
