"""Palettes, colour maps, overlays, indexed PNGs and the training-curve plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.metrics import ConfusionMatrix
from seglab.tools.visualize import (
    colorize,
    make_palette,
    overlay,
    plot_confusion_matrix,
    plot_training_curve,
    save_label_png,
    save_overlay_png,
    save_side_by_side,
)


@pytest.fixture
def labels() -> np.ndarray:
    labels = np.arange(5 * 7).reshape(5, 7) % 4
    labels[0, 0] = 255
    return labels


def test_make_palette_distinct_deterministic_and_not_black():
    for num_classes in (1, 4, 150, 255):
        palette = make_palette(num_classes)
        assert palette.shape == (num_classes, 3) and palette.dtype == np.uint8
        assert len({tuple(c) for c in palette}) == num_classes
        assert not (palette == 0).all(axis=1).any()  # black is reserved for ignored pixels
    np.testing.assert_array_equal(make_palette(19, seed=3), make_palette(19, seed=3))
    assert not np.array_equal(make_palette(19, seed=3), make_palette(19, seed=4))
    # well separated: the closest pair of 20 colours is far apart in RGB
    palette = make_palette(20).astype(float)
    distances = np.linalg.norm(palette[:, None] - palette[None], axis=-1) + np.eye(20) * 1e9
    assert distances.min() > 60


def test_make_palette_uses_a_known_palette():
    known = [[128, 64, 128], [244, 35, 232], [70, 70, 70]]
    np.testing.assert_array_equal(make_palette(2, palette=known), np.array(known[:2], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"shape \(>= 4, 3\)"):
        make_palette(4, palette=known)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        make_palette(1, palette=[[0, 0, 300]])
    with pytest.raises(ValueError, match="num_classes"):
        make_palette(0)


def test_colorize_maps_classes_and_blacks_out_ignore(labels):
    palette = make_palette(4)
    colours = colorize(labels, palette)
    assert colours.shape == (5, 7, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(colours[0, 1], palette[1])
    np.testing.assert_array_equal(colours[1, 3], palette[10 % 4])
    np.testing.assert_array_equal(colorize(torch.from_numpy(labels), palette), colours)  # tensors accepted


def test_colorize_rejects_bad_labels(labels):
    palette = make_palette(4)
    with pytest.raises(ValueError, match=r"values \[4, 9\] outside \[0, 4\)"):
        colorize(np.array([[0, 4], [9, 1]]), palette)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        colorize(labels[None], palette)
    with pytest.raises(TypeError, match="integer"):
        colorize(labels.astype(float), palette)
    with pytest.raises(ValueError, match=r"\(K, 3\)"):
        colorize(labels, palette[:, :2])


def test_overlay_blends_and_keeps_ignored_pixels(labels):
    palette = make_palette(4)
    image = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    out = overlay(image, labels, palette, alpha=0.25)
    expected = np.rint(0.75 * image + 0.25 * palette[labels % 4].astype(float)).astype(np.uint8)
    expected[0, 0] = image[0, 0]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(overlay(image, labels, palette, alpha=0.0), image)
    with pytest.raises(ValueError, match="same"):
        overlay(image[:4], labels, palette)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, labels, palette, alpha=1.5)


def test_label_png_round_trips_indices_and_colours(tmp_path, labels):
    palette = make_palette(4)
    path = save_label_png(tmp_path / "labels.png", labels, palette)
    with Image.open(path) as picture:
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.asarray(picture), labels)
        rgb = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(rgb, colorize(labels, palette))
    assert [p.name for p in tmp_path.iterdir()] == ["labels.png"]
    with pytest.raises(ValueError, match="at most 255 classes"):
        save_label_png(tmp_path / "x.png", labels, make_palette(256))


def test_overlay_png_and_side_by_side(tmp_path, labels):
    palette = make_palette(4)
    image = np.full((5, 7, 3), 200, dtype=np.uint8)
    with Image.open(save_overlay_png(tmp_path / "overlay.png", image, labels, palette, alpha=0.5)) as picture:
        np.testing.assert_array_equal(np.asarray(picture), overlay(image, labels, palette, alpha=0.5))
    pred = (labels + 1) % 4
    with Image.open(save_side_by_side(tmp_path / "demo.png", image, labels, pred, palette, gap=2)) as picture:
        panel = np.asarray(picture)
    assert panel.shape == (5, 3 * 7 + 2 * 2, 3)
    np.testing.assert_array_equal(panel[:, :7], image)
    np.testing.assert_array_equal(panel[:, 7:9], 255)
    np.testing.assert_array_equal(panel[:, 9:16], colorize(labels, palette))
    np.testing.assert_array_equal(panel[:, 18:], colorize(pred, palette))
    with Image.open(save_side_by_side(tmp_path / "nogt.png", image, None, pred, palette)) as picture:
        assert picture.size == (7 + 4 + 7, 5)
    with pytest.raises(ValueError, match="gt is"):
        save_side_by_side(tmp_path / "bad.png", image, labels[:, :6], pred, palette)


def _write_log(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_plot_training_curve_writes_a_png(tmp_path):
    records = [{"kind": "train", "iter": i, "loss": 2.0 / (1 + i / 10), "lr": 1e-3 * (1 - i / 100)}
               for i in range(0, 100, 5)]
    records += [{"kind": "eval", "iter": i, "mIoU": 0.1 + i / 200} for i in (25, 50, 75, 100)]
    records.append({"kind": "info", "message": "done"})
    log = tmp_path / "log.jsonl"
    _write_log(log, records)
    out = plot_training_curve(log, tmp_path / "curves" / "curve.png")
    assert out.is_file() and out.stat().st_size > 1000
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size[0] > 100 and picture.size[1] > 100
        pixels = np.asarray(picture.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # something was drawn
    # eval-only and train-only logs work too
    _write_log(log, records[-5:-1])
    assert plot_training_curve(log, tmp_path / "eval.png").is_file()
    _write_log(log, [{"iter": 1, "loss": 1.0}, {"iter": 2, "loss": 0.5}])
    assert plot_training_curve(log, tmp_path / "train.png").is_file()


def test_plot_training_curve_bad_input(tmp_path):
    log = tmp_path / "log.jsonl"
    with pytest.raises(FileNotFoundError, match="training log not found"):
        plot_training_curve(log, tmp_path / "x.png")
    log.write_text('{"kind": "train", "iter": 1, "loss": 1.0}\n{"kind": "train", "iter": 2,\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2 is not valid JSON"):
        plot_training_curve(log, tmp_path / "x.png")
    _write_log(log, [{"kind": "eval", "iter": 1}])
    with pytest.raises(ValueError, match=r"log.jsonl:1: eval record needs 'iter' and 'mIoU'"):
        plot_training_curve(log, tmp_path / "x.png")
    _write_log(log, [{"kind": "info"}])
    with pytest.raises(ValueError, match="no train records"):
        plot_training_curve(log, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _colour_share(path, rgb) -> float:
    """Fraction of the PNG's pixels that have exactly colour `rgb`."""
    with Image.open(path) as picture:
        pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    return float((pixels == np.asarray(rgb, dtype=np.uint8)).all(axis=1).mean())


def test_plot_confusion_matrix_colours_rows_and_marks_absent_classes(tmp_path):
    from matplotlib import colormaps

    cm = ConfusionMatrix(6)
    target = torch.tensor([0] * 50 + [2] * 40 + [3] * 30 + [4] * 20 + [5] * 10)
    pred = target.clone()
    pred[50:60] = 3  # a quarter of class 2 is predicted as 3
    cm.update(pred, target)  # class 1 never occurs in the target
    names = ["road", "sidewalk", "building", "wall", "fence", "pole"]
    out = plot_confusion_matrix(cm, names, tmp_path / "plots" / "cm.png")
    assert out == tmp_path / "plots" / "cm.png" and [p.name for p in out.parent.iterdir()] == ["cm.png"]
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        small_size = picture.size
    # rows are normalised: the perfectly predicted classes reach the top of the scale whatever their pixel count
    full = tuple(round(float(255 * c)) for c in colormaps["Blues"](1.0)[:3])
    assert _colour_share(out, full) > 0.05
    # the absent class's row is grey, not "0 % accuracy"
    assert _colour_share(out, (217, 217, 217)) > 0.02
    cm.update(torch.tensor([1] * 10), torch.tensor([1] * 10))
    plot_confusion_matrix(cm.matrix, names, tmp_path / "full.png")
    assert _colour_share(tmp_path / "full.png", (217, 217, 217)) < 0.001
    # raw counts and the other normalisations draw too
    for mode in ("pred", "all", None):
        assert plot_confusion_matrix(cm.matrix.numpy(), None, tmp_path / f"{mode}.png", normalize=mode).is_file()

    # ADE20K-sized: the figure grows instead of squeezing 150 labels into a small one
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, size=(150, 150)) + np.diag(rng.integers(50, 100, size=150))
    with Image.open(plot_confusion_matrix(counts, [f"class {i}" for i in range(150)], tmp_path / "ade.png")) as pic:
        assert pic.size[0] > 2 * small_size[0] and pic.size[1] > 2 * small_size[1]


def test_plot_confusion_matrix_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"square \(K, K\).*\(3, 4\)"):
        plot_confusion_matrix(np.ones((3, 4)), None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 class names for a 3x3"):
        plot_confusion_matrix(np.ones((3, 3)), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="normalize must be one of"):
        plot_confusion_matrix(np.ones((3, 3)), None, tmp_path / "x.png", normalize="rows")
    with pytest.raises(ValueError, match="non-negative"):
        plot_confusion_matrix(-np.ones((3, 3)), None, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_legend_lists_each_entry_and_grows_with_the_picture():
    from seglab.tools.visualize import with_legend

    entries = [("ground", (10, 20, 30)), ("apple", (200, 40, 40)), ("chest of drawers", (40, 200, 40))]
    small = with_legend(np.zeros((36, 52, 3), np.uint8), entries)
    large = with_legend(np.zeros((600, 800, 3), np.uint8), entries)
    assert small.shape[0] == 36 and large.shape[0] == 600
    assert (small[:, :52] == 0).all() and (large[:, :800] == 0).all()  # the picture itself is untouched
    for picture, width in ((small, 52), (large, 800)):
        panel = picture[:, width:].reshape(-1, 3)
        for _, colour in entries:  # a swatch per entry
            assert (panel == colour).all(1).any()
    # 36 px: two rows a column (three entries: two columns); 600 px: one column of larger rows
    small_rows = (small[:, 52:] == entries[1][1]).all(2).any(1).sum()
    large_rows = (large[:, 800:] == entries[1][1]).all(2).any(1).sum()
    assert large_rows > small_rows
    assert with_legend(np.zeros((8, 8, 3), np.uint8), []).shape == (8, 8, 3)
