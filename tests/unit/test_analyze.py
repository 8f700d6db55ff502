"""The analyses' building blocks: ERF against analytic supports, mass radii, corruptions (shapes, determinism,
severity order, bad input), the boundary band and per-image mIoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import seglab
from seglab.analyze.corruptions import CORRUPTIONS, FROST_FILES, CorruptionError, check_corruptions, corrupt
from seglab.analyze.erf import effective_receptive_fields, mass_radius, model_outputs, output_centre
from seglab.analyze.errors import boundary_band, image_miou


def _test_image(height: int = 37, width: int = 53) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx * 4) % 256, (yy * 6) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
    image[10:25, 15:40] = (200, 40, 90)
    return image


# ---------------------------------------------------------------------------------------------------- ERF
def test_erf_of_one_3x3_conv_is_its_kernel_support():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    nn.init.constant_(conv.bias, 20.0)  # every output positive: the ReLU of the centre passes all of them
    images = [torch.randn(2, 3, 17, 19), torch.randn(3, 3, 17, 19)]
    fields = effective_receptive_fields(lambda x: {"conv": conv(x)}, images)
    grad = fields["conv"].grad
    # d(sum_o out[o, 8, 9]) / d x[c, 8 + i, 9 + j] = sum_o W[o, c, 1 + i, 1 + j], for every image: linear
    expected = np.zeros((17, 19))
    expected[7:10, 8:11] = conv.weight.detach().sum(0).abs().mean(0).double().numpy()
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-9)
    assert fields["conv"].centre == (8.0, 9.0) and fields["conv"].stride == 1
    assert fields["conv"].radius[0.9] <= np.sqrt(2) + 1e-9


def test_erf_of_a_strided_stack_grows_with_depth():
    torch.manual_seed(1)
    one = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    two = nn.Sequential(one, nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    fields = effective_receptive_fields(lambda x: {"a": one(x), "b": two(x)}, [torch.randn(2, 3, 32, 32)])
    support = [np.argwhere(fields[k].grad > 0) for k in ("a", "b")]
    extent = [int(s.max(0).max() - s.min(0).min()) + 1 for s in support]
    assert extent == [3, 7]  # the theoretical receptive fields of one and two stride-2 3x3 layers
    assert fields["a"].stride == 2 and fields["b"].stride == 4


def test_mass_radius():
    grad = np.zeros((21, 21))
    grad[10, 10] = 1.0
    assert mass_radius(grad, (10.0, 10.0), 0.5) == 0.0
    grad[10, 15] = 1.0  # half the mass 5 px away
    assert mass_radius(grad, (10.0, 10.0), 0.5) == 0.0
    assert mass_radius(grad, (10.0, 10.0), 0.9) == 5.0
    assert mass_radius(np.zeros((4, 4)), (1.5, 1.5), 0.5) == 0.0


def test_output_centre_maps_to_the_cell_middle():
    assert output_centre((8, 8), (32, 32)) == ((4, 4), (17.5, 17.5))
    assert output_centre((17, 19), (17, 19)) == ((8, 9), (8.0, 9.0))


@pytest.mark.parametrize("name", ["segformer_b0", "segnext_t", "fcn_hrnetv2_w18s", "segmenter_vit_t"])
def test_erf_of_registered_models(name):
    model = seglab.create_model(name, num_classes=3).eval()
    fields = effective_receptive_fields(model_outputs(model), [torch.randn(1, 3, 64, 64)])
    assert list(fields)[-1] == "head" and any(k.startswith("stage") for k in fields)
    for f in fields.values():
        assert f.grad.shape == (64, 64) and np.isfinite(f.grad).all() and f.grad.sum() > 0
        assert 0 <= f.radius[0.5] <= f.radius[0.9] <= np.hypot(64, 64)


@pytest.mark.parametrize("name, task", [("bpr_hrnet18s", "refine"), ("mask_rcnn_r50_fpn", "instance")])
def test_analyses_refuse_models_of_other_tasks(name, task):
    from seglab.analyze.subject import load_subject

    with pytest.raises(ValueError, match=f"{name} is a model of the '{task}' task"):
        load_subject(name, None)


def test_erf_refuses_a_model_without_backbone():
    with pytest.raises(ValueError, match="no `backbone`"):
        model_outputs(nn.Conv2d(3, 3, 1))


# ---------------------------------------------------------------------------------------------------- corruptions
def _frost_dir(tmp_path):
    rng = np.random.default_rng(0)
    for name in FROST_FILES:
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_shape_dtype_and_determinism(name, tmp_path):
    image = _test_image()
    frost_dir = _frost_dir(tmp_path) if name == "frost" else None
    for severity in (1, 5):
        a = corrupt(image, name, severity, np.random.default_rng(3), frost_dir=frost_dir)
        b = corrupt(image, name, severity, np.random.default_rng(3), frost_dir=frost_dir)
        assert a.shape == image.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
        assert (a != image).any(), f"{name} at severity {severity} left the image unchanged"


# the corruptions whose ImageNet-C parameters grow in one strength; glass blur, snow and fog change several
# parameters at once and saturate lowers then raises the saturation, so their pixel change is not ordered
MONOTONE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "defocus_blur",
            "motion_blur", "zoom_blur", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")


@pytest.mark.parametrize("name", MONOTONE)
def test_severity_is_monotone_on_a_fixed_image(name):
    image = _test_image()
    change = [np.abs(corrupt(image, name, s, np.random.default_rng(0)).astype(float) - image).mean()
              for s in range(1, 6)]
    assert all(a < b for a, b in zip(change, change[1:], strict=False)), change


def test_corruption_errors(tmp_path):
    image = _test_image()
    with pytest.raises(CorruptionError, match="valid: gaussian_noise"):
        corrupt(image, "rain", 1, np.random.default_rng(0))
    with pytest.raises(CorruptionError, match="spatter needs OpenCV"):
        check_corruptions(["spatter"])
    with pytest.raises(CorruptionError, match="severity must be an int in 1..5"):
        corrupt(image, "contrast", 6, np.random.default_rng(0))
    with pytest.raises(CorruptionError, match=r"uint8 \(H, W, 3\)"):
        corrupt(image.astype(np.float32), "contrast", 1, np.random.default_rng(0))
    with pytest.raises(CorruptionError, match="frost textures missing"):
        corrupt(image, "frost", 1, np.random.default_rng(0), frost_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------- errors
def _band_by_brute_force(mask: torch.Tensor, width: int, ignore: int = 255) -> torch.Tensor:
    m = mask.numpy()
    h, w = m.shape
    edges = [(r, c) for r in range(h) for c in range(w) if m[r, c] != ignore and any(
        0 <= r + dr < h and 0 <= c + dc < w and m[r + dr, c + dc] not in (ignore, m[r, c])
        for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)))]
    band = torch.zeros(h, w, dtype=torch.bool)
    for r in range(h):
        for c in range(w):
            band[r, c] = bool(m[r, c] != ignore) and any(max(abs(r - er), abs(c - ec)) <= width for er, ec in edges)
    return band


def test_boundary_band_equals_the_chebyshev_distance_to_label_changes():
    mask = torch.zeros(40, 40, dtype=torch.long)
    mask[10:30, 10:30] = 1
    mask[20:25, 32:38] = 2
    for width in (1, 3, 5):
        assert torch.equal(boundary_band(mask, width), _band_by_brute_force(mask, width))
    assert boundary_band(mask, 3)[10, 10] and not boundary_band(mask, 3)[18, 18] and not boundary_band(mask, 3)[2, 2]
    mask[0:8, :] = 255  # ignored pixels are never in the band, and their edge with labels is no boundary
    band = boundary_band(mask, 3)
    assert torch.equal(band, _band_by_brute_force(mask, 3))
    assert not band[0:8].any() and not band[8, 0:5].any()


def test_image_miou():
    mask = torch.tensor([[0, 0, 1, 1]])
    assert image_miou(mask.clone(), mask, 3) == 1.0
    pred = torch.tensor([[0, 1, 1, 1]])
    assert image_miou(pred, mask, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
