"""Images of any size: streamed slide inference and chunked resizing give exactly the plain forms' labels, with
allocations that do not grow with the image height; reading past PIL's pixel limit; tiled TIFF label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from seglab.data.datasets import DatasetError, read_image
from seglab.inference import label_dtype, resized_labels, slide_inference, slide_labels
from seglab.layers.shape import resize
from seglab.tools.tiff import write_tiled_tiff


class ConvLogits(nn.Module):
    """Random logits at stride 4; with `step`, logits are rounded to multiples of it, so classes tie often and the
    tie-breaking (the first maximal class) is exercised."""

    def __init__(self, num_classes: int, step: float | None = None, stride: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, stride=stride, padding=1)
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out if self.step is None else torch.round(out / self.step) * self.step


GRIDS = [  # height, width, crop, stride, window_batch, batch
    (50, 70, 16, 11, 3, 1),  # forward batches span two rows of windows
    (64, 64, 64, 64, 8, 2),  # one window
    (37, 101, (20, 30), (7, 29), 5, 1),  # stride < crop / 2 down: a pixel is covered by three rows of windows
    (90, 33, 40, 13, 1, 2),
    (10, 10, 16, 8, 8, 1),  # image smaller than the crop
    (120, 130, 32, 32, 4, 1),  # no overlap
    (81, 97, 24, 9, 7, 1),
]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "x".join(map(str, g[:2])) + f"-c{g[2]}-s{g[3]}-wb{g[4]}")
@pytest.mark.parametrize("align_corners", [False, True])
def test_slide_labels_equal_the_argmax_of_slide_inference(grid, align_corners):
    height, width, crop, stride, window_batch, batch = grid
    torch.manual_seed(height * width)
    model = ConvLogits(7).eval()
    images = torch.randn(batch, 3, height, width)
    logits = slide_inference(model, images, crop, stride, align_corners, window_batch)
    labels, scores = slide_labels(model, images, crop, stride, align_corners, window_batch, with_scores=True)
    assert labels.dtype == torch.uint8 and labels.shape == (batch, height, width)
    assert torch.equal(labels.long(), logits.argmax(1))
    torch.testing.assert_close(scores, logits.softmax(1).amax(1), rtol=0, atol=1e-6)


def test_slide_labels_break_ties_as_argmax_and_use_wide_dtypes():
    torch.manual_seed(0)
    images = torch.randn(1, 3, 61, 75)
    tied = ConvLogits(5, step=1.0, stride=1).eval()
    logits = slide_inference(tied, images, 24, 10)
    assert (logits == logits.amax(1, keepdim=True)).sum(1).gt(1).float().mean() > 0.1  # many tied pixels
    assert torch.equal(slide_labels(tied, images, 24, 10).long(), logits.argmax(1))
    wide = ConvLogits(300).eval()  # more classes than a byte holds
    labels = slide_labels(wide, images, 24, 10, window_batch=4)
    assert labels.dtype == torch.int16 == label_dtype(300)
    assert torch.equal(labels.long(), slide_inference(wide, images, 24, 10, window_batch=4).argmax(1))


def test_slide_labels_normalise_each_window_batch():
    """uint8 pixels with a `preprocess` give the labels of the image normalised as a whole."""
    torch.manual_seed(1)
    pixels = torch.randint(0, 256, (1, 3, 45, 66), dtype=torch.uint8)
    model = ConvLogits(4).eval()
    mean, std = torch.tensor([120.0, 110.0, 100.0]).view(3, 1, 1), torch.tensor([58.0, 57.0, 57.5]).view(3, 1, 1)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x.float() - mean) / std

    expected = slide_inference(model, normalise(pixels), 20, 14).argmax(1)
    assert torch.equal(slide_labels(model, pixels, 20, 14, preprocess=normalise).long(), expected)


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any operation returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_slide_labels_allocations_do_not_grow_with_the_height():
    """The largest buffer is the carry of the rows the next row of windows overlaps ((crop - stride) x W, and up to
    crop x W before a last row clamped to the border) or one window's logits: never more than K x crop x W,
    whatever the height. The plain form's accumulator is K x H x W."""
    num_classes, width, crop, stride = 150, 300, 64, 48
    model = ConvLogits(num_classes).eval()
    largest = {}
    for height in (208, 784, 800):  # 64 + 48 k rows end on a window; 800 has its last row clamped
        images = torch.randn(1, 3, height, width)
        with LargestAllocation() as record:
            slide_labels(model, images, crop, stride)
        largest[height] = record.largest
    with LargestAllocation() as record:
        slide_inference(model, images, crop, stride)
    assert largest[208] == largest[784] == num_classes * (crop - stride) * width * 4
    assert largest[800] <= num_classes * crop * width * 4
    assert record.largest >= num_classes * 800 * width * 4  # the (1, K, H, W) float32 sum
    assert largest[800] * 10 < record.largest


@pytest.mark.parametrize("align_corners", [False, True])
def test_resized_labels_equal_the_argmax_of_the_resized_logits(align_corners):
    torch.manual_seed(2)
    logits = torch.round(torch.randn(2, 9, 13, 17) * 2) / 2  # ties between classes
    size = (101, 67)
    expected = resize(logits, size, align_corners=align_corners).argmax(1)
    for max_bytes in (1, 2 * 101 * 67 * 4 * 4, 2**28):  # one class a pass, four, all
        labels = resized_labels(logits, size, align_corners, max_bytes=max_bytes)
        assert labels.dtype == torch.uint8 and torch.equal(labels.long(), expected)


def test_read_image_past_the_pixel_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((60, 50, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses images over twice the limit
    with pytest.raises(DatasetError, match=r"big\.png.*--max-pixels"):
        read_image(path)
    assert read_image(path, max_pixels=3000).shape == (3, 60, 50)
    assert Image.MAX_IMAGE_PIXELS == 1000  # the guard is back
    with pytest.raises(DatasetError, match=r"big\.png has 50 x 60 = 3000 pixels, more than max_pixels=2999"):
        read_image(path, max_pixels=2999)


def test_tiled_tiff_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 150, (300, 217)).astype(np.uint8)
    palette = rng.integers(0, 256, (150, 3)).astype(np.uint8)
    path = write_tiled_tiff(tmp_path / "labels.tif", labels, palette, tile=64)
    with Image.open(path) as tif:
        assert tif.mode == "P" and tif.size == (217, 300)
        assert tif.tag_v2[322] == tif.tag_v2[323] == 64  # tile width, tile length
        assert len(tif.tag_v2[324]) == 5 * 4  # tiles down x across
        np.testing.assert_array_equal(np.asarray(tif), labels)
        np.testing.assert_array_equal(np.asarray(tif.getpalette()).reshape(-1, 3)[:150], palette)
    wide = rng.integers(0, 3000, (70, 90)).astype(np.uint16)
    with Image.open(write_tiled_tiff(tmp_path / "wide.tif", wide, tile=32)) as tif:
        np.testing.assert_array_equal(np.asarray(tif), wide)
    with pytest.raises(ValueError, match="multiple of 16"):
        write_tiled_tiff(tmp_path / "x.tif", labels, tile=100)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_tiled_tiff(tmp_path / "x.tif", labels.astype(np.int64))
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize("test", [
    {"mode": "slide", "crop": [64, 64], "stride": [40, 40]},  # streamed
    {"mode": "slide", "crop": [64, 64], "stride": [40, 40], "scale": [160, 64]},  # slide at another size, resized
    {"mode": "whole", "scale": [160, 64]},
    {"mode": "whole"},
], ids=["slide", "slide-rescaled", "whole-rescaled", "whole"])
def test_predictor_labels_are_the_argmax_of_its_probabilities(test):
    """The predictor's memory-lean labels equal the argmax of the probabilities of `seglab.inference.predict`."""
    import seglab
    from seglab.hub.predictor import Predictor

    torch.manual_seed(3)
    model = seglab.create_model("segformer_b0", num_classes=150).eval()
    model.seglab_meta = {"test": test}
    predictor = Predictor(model, device="cpu")
    image = torch.randint(0, 256, (3, 90, 131), dtype=torch.uint8)
    labels = predictor(image).labels
    assert labels.dtype == np.uint8 and labels.shape == (90, 131)
    np.testing.assert_array_equal(labels, predictor.probabilities(image).argmax(0).numpy())
