"""Paired transforms: mask interpolation, padding, cat_max_ratio, shapes, determinism, normalisation."""

from __future__ import annotations

import pytest
import torch

from seglab.data import transforms
from seglab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainTransform,
    pad_to,
    photometric_distortion,
    random_crop_box,
    rescale_size,
    resize_mask,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sample(h: int = 60, w: int = 80, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    # labels far apart, so any interpolation other than nearest would create values in between
    mask = torch.tensor([0, 3, 7, 200])[torch.randint(0, 4, (h // 4 + 1, w // 4 + 1), generator=g)]
    mask = mask.repeat_interleave(4, 0).repeat_interleave(4, 1)[:h, :w].contiguous()
    mask[:5] = 255
    return image, mask


def test_rescale_size_follows_mmcv():
    # factor = min(long / max(h, w), short / min(h, w)); sides rounded half up
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(300, 400, (1024, 256)) == (256, 341)  # factor 256/300: 341.33 -> 341
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # long side binds: factor 2.048
    assert rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)


def test_masks_are_resized_with_nearest_only():
    _, mask = _sample()
    for size in ((37, 53), (150, 211), (60, 80)):
        assert set(resize_mask(mask, size).unique().tolist()) <= {0, 3, 7, 200, 255}
    transform = TrainTransform(crop_size=(48, 48), scale=(160, 120), ratio_range=(0.5, 2.0), cat_max_ratio=1.0)
    image, mask = _sample()
    seen = set()
    for seed in range(8):
        _, out = transform(image, mask, generator=_gen(seed))
        seen |= set(out.unique().tolist())
    assert seen <= {0, 3, 7, 200, 255} and {3, 7, 200} <= seen


def test_output_shapes_and_types_for_small_and_large_inputs():
    transform = TrainTransform(crop_size=(32, 40), scale=(128, 64))
    for h, w in ((20, 24), (64, 64), (120, 40), (300, 500)):
        image, mask = _sample(h, w)
        out_image, out_mask = transform(image, mask, generator=_gen(1))
        assert out_image.shape == (3, 32, 40) and out_image.dtype == torch.float32
        assert out_mask.shape == (32, 40) and out_mask.dtype == torch.int64


def test_padding_uses_zero_for_the_image_and_ignore_for_the_mask():
    image, mask = _sample(20, 30)
    mask[:] = 3
    transform = TrainTransform(crop_size=(32, 40), scale=None, flip_prob=0.0, photometric=False,
                               cat_max_ratio=1.0)
    out_image, out_mask = transform(image, mask)
    assert (out_mask[20:] == 255).all() and (out_mask[:, 30:] == 255).all()
    assert (out_mask[:20, :30] == 3).all()
    assert (out_image[:, 20:] == 0).all() and (out_image[:, :, 30:] == 0).all()
    padded_image, padded_mask = pad_to(torch.ones(3, 2, 2), torch.zeros(2, 2, dtype=torch.int64), (3, 4), 99)
    assert padded_mask.tolist() == [[0, 0, 99, 99], [0, 0, 99, 99], [99, 99, 99, 99]]
    assert padded_image.sum() == 12


def _share(mask: torch.Tensor, box, ignore_index: int = 255) -> tuple[int, float]:
    top, left, h, w = box
    crop = mask[top : top + h, left : left + w]
    counts = torch.bincount(crop[crop != ignore_index].flatten())
    counts = counts[counts > 0]
    return len(counts), float(counts.max() / counts.sum())


def test_cat_max_ratio_is_respected_when_possible():
    # a 64x64 map of class 0 with a 32x32 block of class 1 in a corner: about a third of the 32x32 crops hold
    # both classes with neither above 75%
    mask = torch.zeros(64, 64, dtype=torch.int64)
    mask[:32, :32] = 1
    mask[60:] = 255  # ignored pixels do not count

    def satisfied(ratio: float) -> int:
        ok = 0
        for seed in range(40):
            box = random_crop_box(mask, (32, 32), ratio, 255, _gen(seed))
            classes, share = _share(mask, box)
            ok += classes > 1 and share < 0.75
        return ok

    assert satisfied(0.75) >= 38
    assert satisfied(1.0) <= 25


def test_crop_box_never_exceeds_the_image():
    mask = torch.zeros(10, 50, dtype=torch.int64)
    for seed in range(10):
        top, left, h, w = random_crop_box(mask, (32, 32), 0.75, 255, _gen(seed))
        assert (h, w) == (10, 32) and top == 0 and 0 <= left <= 18


def test_determinism_under_a_seed():
    transform = TrainTransform(crop_size=(32, 32), scale=(128, 64))
    image, mask = _sample()
    a = transform(image, mask, generator=_gen(5))
    b = transform(image, mask, generator=_gen(5))
    c = transform(image, mask, generator=_gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_without_randomness_the_pipeline_is_normalisation_only():
    image, mask = _sample(32, 32)
    transform = TrainTransform(crop_size=(32, 32), scale=None, flip_prob=0.0, photometric=False, cat_max_ratio=1.0)
    out_image, out_mask = transform(image, mask)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out_image, (image.float() - mean) / std)
    assert torch.equal(out_mask, mask)
    flipped_image, flipped_mask = TrainTransform(crop_size=(32, 32), scale=None, flip_prob=1.0, photometric=False,
                                                 cat_max_ratio=1.0)(image, mask)
    torch.testing.assert_close(flipped_image, out_image.flip(-1))
    assert torch.equal(flipped_mask, mask.flip(-1))


def test_photometric_distortion_changes_colours_within_range_and_keeps_grey_grey():
    image, _ = _sample(16, 16)
    outputs = [photometric_distortion(image, _gen(seed)) for seed in range(10)]
    assert all(o.min() >= 0 and o.max() <= 255 and torch.equal(o, o.floor()) for o in outputs)
    assert sum(not torch.equal(o, image.float()) for o in outputs) >= 8
    grey = torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8).expand(3, 16, 16)
    for seed in range(10):
        out = photometric_distortion(grey, _gen(seed))
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_saturation_scaling_keeps_the_brightest_channel():
    # saturation 0 turns every pixel into grey at its HSV value (its brightest channel)
    image, _ = _sample(8, 8)
    for seed in range(20):
        out = photometric_distortion(image, _gen(seed), brightness_delta=0.0, contrast_range=(1.0, 1.0),
                                     saturation_range=(0.0, 0.0), hue_delta=0)
        if not torch.equal(out, image.float()):
            assert torch.equal(out, image.float().amax(0, keepdim=True).expand_as(out))
            return
    pytest.fail("saturation step never ran in 20 seeds")


def test_test_transform_resizes_the_image_only_and_normalises():
    image, mask = _sample(100, 150)
    out_image, out_mask = transforms.TestTransform(scale=(2048, 512))(image, mask)
    assert out_image.shape == (3, 512, 768) and out_mask is mask
    out_image, _ = transforms.TestTransform(scale=(2048, 512), size_divisor=32)(image, mask)
    assert out_image.shape == (3, 512, 768)
    out_image, _ = transforms.TestTransform(scale=(100, 50), size_divisor=32)(image, mask)
    assert out_image.shape == (3, 64, 96)  # keep ratio -> 50x75 -> multiples of 32
    out_image, _ = transforms.TestTransform(scale=(96, 40), keep_ratio=False)(image, mask)
    assert out_image.shape == (3, 40, 96)  # (width, height), as mmseg
    assert transforms.TestTransform(scale=(2048, 512), size_divisor=32).output_size(100, 150) == (512, 768)


def test_normalisation_values():
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    at_mean = mean.expand(3, 4, 4)
    out, _ = transforms.TestTransform()(at_mean)
    torch.testing.assert_close(out, torch.zeros(3, 4, 4))
    out, _ = transforms.TestTransform()(at_mean + std)
    torch.testing.assert_close(out, torch.ones(3, 4, 4))
    white = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    out, _ = transforms.TestTransform(mean=(0, 0, 0), std=(255, 255, 255))(white)
    torch.testing.assert_close(out, torch.ones(3, 2, 2))
