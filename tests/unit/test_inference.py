"""Inference policies (whole / slide / flip / multi-scale) checked exactly with stub models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.inference import predict, predict_labels, slide_inference, slide_windows, whole_inference


class ConstantLogits(nn.Module):
    """Logits equal to 1 everywhere, at stride 4 (rounded up), K classes."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = -(-x.shape[2] // 4), -(-x.shape[3] // 4)
        return x.new_ones(x.shape[0], self.num_classes, h, w)


class PositionRecorder(nn.Module):
    """Reads the absolute (row, col) each window pixel came from (encoded in channels 0/1) and records the boxes.

    Returns the input itself as logits (stride 1), so slide averaging of identical values gives the input back.
    """

    def __init__(self) -> None:
        super().__init__()
        self.boxes: list[tuple[int, int, int, int]] = []
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        for item in x:
            rows, cols = item[0], item[1]
            self.boxes.append((int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1))
        return x.clone()


def position_image(batch: int, height: int, width: int) -> torch.Tensor:
    """(B, 3, H, W): channel 0 = row index, 1 = column index, 2 = image index."""
    rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    return torch.stack([torch.stack([rows, cols, torch.full_like(rows, b)]) for b in range(batch)])


class ColumnRamp(nn.Module):
    """Class-0 logit = channel 0 of the input + the column index within the model's input; class 1 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.arange(x.shape[-1], dtype=x.dtype)
        return torch.stack([x[:, 0] + ramp, torch.zeros_like(x[:, 0])], dim=1)


class WidthScaled(nn.Module):
    """Class-0 logit = channel 0 times (input width / 16), i.e. depends on the scale; records input sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return torch.stack([x[:, 0] * (x.shape[-1] / 16), torch.zeros_like(x[:, 0])], dim=1)


def test_slide_grid_matches_mmseg_hand_computed():
    # H=10: g = (10 - 4 + 3 - 1) // 3 + 1 = 3; W=13: g = (13 - 4 + 2) // 3 + 1 = 4
    rows = [(0, 4), (3, 7), (6, 10)]
    cols = [(0, 4), (3, 7), (6, 10), (9, 13)]
    expected = [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]
    assert slide_windows(10, 13, crop_size=4, stride=3) == expected
    # H=11: g = 4, the last start 9 is clamped to 11 - 4 = 7; W=13 with crop 5, stride 4: g = 3, starts 0, 4, 8
    assert slide_windows(11, 13, crop_size=(4, 5), stride=(3, 4)) == [
        (y1, y2, x1, x2) for y1, y2 in [(0, 4), (3, 7), (6, 10), (7, 11)] for x1, x2 in [(0, 5), (4, 9), (8, 13)]
    ]
    # image smaller than the crop: one window = the image
    assert slide_windows(5, 7, crop_size=8, stride=4) == [(0, 5, 0, 7)]


def test_slide_runs_the_windows_of_the_grid_in_batches():
    model = PositionRecorder()
    images = position_image(2, 10, 13)
    out = slide_inference(model, images, crop_size=4, stride=3, window_batch=5)
    rows = [(0, 4), (3, 7), (6, 10)]
    cols = [(0, 4), (3, 7), (6, 10), (9, 13)]
    expected = [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]
    # windows are concatenated window-major, each carrying both images
    assert model.boxes == [box for box in expected for _ in range(2)]
    assert model.batch_sizes == [10, 10, 4]  # 12 windows, 5 per forward, B=2
    # averaging identical per-pixel values over overlapping windows returns the image (images do not mix)
    torch.testing.assert_close(out, images, rtol=0, atol=1e-12)


def test_slide_coverage_is_count_normalised():
    images = torch.randn(2, 3, 23, 31)
    out = slide_inference(ConstantLogits(num_classes=3), images, crop_size=(8, 12), stride=(5, 7))
    assert out.shape == (2, 3, 23, 31)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=1e-6)


def test_slide_with_crop_covering_image_equals_whole():
    model = nn.Conv2d(3, 4, kernel_size=4, stride=4).double()
    images = torch.randn(2, 3, 22, 30, dtype=torch.float64)
    whole = predict(model, images, mode="whole")
    for crop in [(22, 30), (32, 32)]:
        slide = predict(model, images, mode="slide", crop_size=crop, stride=16)
        torch.testing.assert_close(slide, whole, rtol=0, atol=1e-12)


def test_whole_resizes_logits_once_to_out_size():
    model = nn.Conv2d(3, 4, kernel_size=4, stride=4).double()
    images = torch.randn(1, 3, 24, 32, dtype=torch.float64)
    for align_corners in (False, True):
        out = predict(model, images, out_size=(37, 50), align_corners=align_corners)
        direct = F.interpolate(model(images), size=(37, 50), mode="bilinear", align_corners=align_corners)
        assert out.shape == (1, 4, 37, 50)
        torch.testing.assert_close(out, direct.softmax(dim=1), rtol=0, atol=1e-12)
        twice = F.interpolate(F.interpolate(model(images), size=(24, 32), mode="bilinear",
                                            align_corners=align_corners), size=(37, 50), mode="bilinear",
                              align_corners=align_corners)
        assert not torch.allclose(out, twice.softmax(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(1, 37, 50, dtype=torch.float64))


def test_slide_out_size_resizes_the_averaged_logits():
    model = nn.Conv2d(3, 2, kernel_size=4, stride=4).double()
    images = torch.randn(1, 3, 20, 28, dtype=torch.float64)
    out = predict(model, images, mode="slide", crop_size=12, stride=8, out_size=(31, 17))
    logits = slide_inference(model, images, crop_size=12, stride=8)
    expected = F.interpolate(logits, size=(31, 17), mode="bilinear", align_corners=False).softmax(dim=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_flip_averages_softmax_of_flipped_run_exactly():
    images = torch.randn(2, 3, 6, 9, dtype=torch.float64)
    out = predict(ColumnRamp(), images, flip=True)
    value, ramp = images[:, 0], torch.arange(9, dtype=torch.float64)
    # plain run: x + c; flipped run, flipped back: x + (W - 1 - c); softmax([a, 0])[0] = sigmoid(a)
    expected = 0.5 * (torch.sigmoid(value + ramp) + torch.sigmoid(value + (8 - ramp)))
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, 1], 1 - expected, rtol=0, atol=1e-12)
    no_flip = predict(ColumnRamp(), images)
    torch.testing.assert_close(no_flip[:, 0], torch.sigmoid(value + ramp), rtol=0, atol=1e-12)


def test_flip_with_slide_mode():
    images = torch.randn(1, 3, 7, 11, dtype=torch.float64)
    out = predict(ColumnRamp(), images, mode="slide", crop_size=(7, 11), stride=4, flip=True)
    value, ramp = images[:, 0], torch.arange(11, dtype=torch.float64)
    expected = 0.5 * (torch.sigmoid(value + ramp) + torch.sigmoid(value + (10 - ramp)))
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=1e-12)


def test_multi_scale_averages_probabilities_of_each_scale():
    model = WidthScaled()
    images = torch.full((1, 3, 10, 16), 0.8, dtype=torch.float64)
    out = predict(model, images, scales=(1.0, 0.5, 0.75), flip=True)
    assert out.shape == (1, 2, 10, 16)
    # sizes round half up, as mmcv's rescale; each scale runs plain, then flipped
    assert model.sizes == [(10, 16), (10, 16), (5, 8), (5, 8), (8, 12), (8, 12)]
    # a constant image gives the constant logit 0.8 * W_scaled / 16 at each scale; probabilities are averaged
    logits = torch.tensor([0.8, 0.4, 0.6], dtype=torch.float64)
    expected = torch.sigmoid(logits).mean()
    torch.testing.assert_close(out[:, 0], expected.expand(1, 10, 16), rtol=0, atol=1e-12)
    assert abs(expected - torch.sigmoid(logits.mean())) > 1e-4  # averaging logits would be detected


def test_multi_scale_slide_runs_the_grid_at_each_scale():
    model = PositionRecorder()
    images = position_image(1, 16, 16)
    predict(model, images, mode="slide", crop_size=8, stride=8, scales=(1.0, 0.5))
    # 4 windows of 8x8 at scale 1, then the 8x8 image as one window at scale 0.5
    assert model.batch_sizes == [4, 1]


def test_predict_labels_is_argmax():
    images = torch.randn(2, 3, 6, 9, dtype=torch.float64)
    labels = predict_labels(ColumnRamp(), images)
    assert labels.dtype == torch.int64 and labels.shape == (2, 6, 9)
    # class 0 wins where its logit x + c is positive
    torch.testing.assert_close(labels, (images[:, 0] + torch.arange(9.0, dtype=torch.float64) < 0).long())


def test_whole_inference_returns_logits():
    model = nn.Conv2d(3, 2, kernel_size=2, stride=2)
    images = torch.randn(1, 3, 8, 10)
    logits = whole_inference(model, images)
    torch.testing.assert_close(logits, F.interpolate(model(images), size=(8, 10), mode="bilinear"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"images": torch.randn(3, 8, 8)}, ValueError, r"\(B, C, H, W\)"),
        ({"images": torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, TypeError, "floating-point"),
        ({"mode": "tiles"}, ValueError, "mode must be one of"),
        ({"mode": "slide"}, ValueError, "crop_size and stride"),
        ({"mode": "slide", "crop_size": 4}, ValueError, "crop_size and stride"),
        ({"mode": "slide", "crop_size": 4, "stride": 6}, ValueError, "must not exceed crop_size"),
        ({"mode": "slide", "crop_size": (4, 4, 4), "stride": 2}, ValueError, "crop_size must be"),
        ({"mode": "slide", "crop_size": 4, "stride": 2, "window_batch": 0}, ValueError, "window_batch"),
        ({"scales": ()}, ValueError, "scales"),
        ({"out_size": (0, 5)}, ValueError, "out_size"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, error, match):
    kwargs = {"images": torch.randn(1, 3, 8, 8), **kwargs}
    with pytest.raises(error, match=match):
        predict(nn.Conv2d(3, 2, 1), **kwargs)


def test_model_must_return_logits_tensor():
    with pytest.raises(TypeError, match=r"\(B, K, h, w\)"):
        predict(lambda x: {"logits": x}, torch.randn(1, 3, 8, 8))


def test_segformer_b0_slide_with_covering_crop_equals_whole():
    model = seglab.create_model("segformer_b0", num_classes=6).eval()
    images = torch.randn(1, 3, 70, 90)
    whole = predict(model, images, mode="whole")
    slide = predict(model, images, mode="slide", crop_size=(96, 96), stride=(64, 64))
    assert whole.shape == (1, 6, 70, 90)
    assert (whole - slide).abs().max().item() <= 1e-5
    tiled = predict(model, images, mode="slide", crop_size=(48, 64), stride=(32, 40), flip=True)
    assert tiled.shape == (1, 6, 70, 90)
    torch.testing.assert_close(tiled.sum(dim=1), torch.ones(1, 70, 90))
