"""Paired image/mask transforms with mmsegmentation's training and test behaviour.

Training (`TrainTransform`), in mmseg's order: random keep-ratio resize, random crop that avoids crops
dominated by one class (`cat_max_ratio`), horizontal flip, photometric distortion, normalisation, padding to
the crop size. Testing (`TestTransform`): keep-ratio resize of the image only (metrics are computed against
the mask at its original size) and normalisation.

Images enter as uint8 (3, H, W) and leave as normalised float32; masks enter and leave as int64 (H, W).
Masks are only ever resized with nearest-neighbour interpolation and padded with the ignore index, so no
new label values appear. Every random draw comes from the `generator` passed to `__call__` (torch's global
generator when None), so a sample seeded with its own generator is reproduced exactly on a resumed run.

Images are resized bilinearly without anti-aliasing, as OpenCV's `INTER_LINEAR` (mmcv's default) does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """An integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=generator))


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """The (height, width) that fits an image inside `scale` keeping its aspect ratio.

    mmcv's `imrescale`: factor = min(long / max(h, w), short / min(h, w)) with (long, short) = the larger and
    smaller entry of `scale`, and each side rounded half up.
    """
    long, short = max(scale), min(scale)
    factor = min(long / max(height, width), short / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of a (3, H, W) image to (h, w), without anti-aliasing (as OpenCV)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.resize_image(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=False)


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of an (H, W) mask to (h, w); values stay in the original label set."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.resize_mask(mask, list(size), interpolation=InterpolationMode.NEAREST)


def random_crop_box(
    mask: torch.Tensor,
    crop_size: Sequence[int],
    cat_max_ratio: float = 1.0,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """A random crop `(top, left, height, width)` of at most `crop_size`, as mmseg's `RandomCrop`.

    With `cat_max_ratio < 1`, a crop is redrawn (up to 10 times) unless it holds at least two classes and its
    most frequent class covers less than `cat_max_ratio` of its labelled (non-ignore) pixels; after 10
    rejections the next draw is kept.
    """
    height, width = mask.shape[-2:]
    crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)

    def draw() -> tuple[int, int, int, int]:
        top = _randint(generator, 0, height - crop_h + 1)
        left = _randint(generator, 0, width - crop_w + 1)
        return top, left, crop_h, crop_w

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            top, left, h, w = box
            labels = mask[top : top + h, left : left + w]
            counts = torch.bincount(labels[labels != ignore_index].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
                break
            box = draw()
    return box


def photometric_distortion(
    image: torch.Tensor,
    generator: torch.Generator | None = None,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> torch.Tensor:
    """mmseg's `PhotoMetricDistortion` on a (3, H, W) image in 0..255; returns float32 in 0..255.

    Each step runs with probability 0.5: brightness (add a value in +-`brightness_delta`), contrast (multiply
    by a factor in `contrast_range`) either first or last (chosen at random), saturation (scale HSV
    saturation), hue (rotate by an integer in [-`hue_delta`, `hue_delta`) in OpenCV's 0..180 hue units).
    Values are clipped to 0..255 and truncated to integers after each step, as mmseg's uint8 round trips.
    """
    image = image.to(torch.float32)

    def contrast(x: torch.Tensor) -> torch.Tensor:
        if _randint(generator, 0, 2):
            # NOTE: mmseg's "contrast" is a plain multiplication, not a blend with the mean grey.
            x = (x * _uniform(generator, *contrast_range)).clamp(0, 255).floor()
        return x

    if _randint(generator, 0, 2):
        image = (image + _uniform(generator, -brightness_delta, brightness_delta)).clamp(0, 255).floor()
    contrast_first = _randint(generator, 0, 2) == 1
    if contrast_first:
        image = contrast(image)
    if _randint(generator, 0, 2):
        alpha = _uniform(generator, *saturation_range)
        # Scaling HSV saturation by alpha with hue and value fixed moves every channel c to v - k (v - c),
        # k = min(alpha, v / (v - min)) so that saturation stays <= 1.
        value = image.amax(dim=0, keepdim=True)
        spread = value - image.amin(dim=0, keepdim=True)
        k = torch.where(spread > 0, torch.minimum(torch.full_like(value, alpha), value / spread.clamp_min(1e-6)),
                        torch.ones_like(value))
        image = (value - k * (value - image)).clamp(0, 255).floor()
    if _randint(generator, 0, 2):
        shift = _randint(generator, -hue_delta, hue_delta) if hue_delta > 0 else 0
        image = (F.adjust_hue(image / 255.0, shift / 180.0) * 255.0).clamp(0, 255).floor()
    if not contrast_first:
        image = contrast(image)
    return image


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(image - mean) / std per channel, in float32; mean and std in 0..255 units."""
    return F.normalize(image.to(torch.float32), mean=list(mean), std=list(std))


def pad_to(
    image: torch.Tensor, mask: torch.Tensor | None, size: Sequence[int], ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pads bottom and right up to `size` (h, w): the image with 0, the mask with `ignore_index`."""
    pad_h, pad_w = max(size[0] - image.shape[-2], 0), max(size[1] - image.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, mask
    padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
    image = F.pad_image(image, padding, fill=0.0)
    if mask is not None:
        mask = F.pad_mask(mask, padding, fill=ignore_index)
    return image, mask


class TrainTransform:
    """mmseg's training pipeline: RandomResize, RandomCrop(cat_max_ratio), flip, photometric, normalise, pad.

    Args:
        crop_size: (h, w) of the output.
        scale: (long, short) base scale; the image is resized to fit inside `scale * ratio` keeping its aspect
            ratio (None: no resize).
        ratio_range: range of the uniform random ratio (None: always 1).
        cat_max_ratio: largest share of a crop's labelled pixels one class may take (1.0 turns the check off).
        flip_prob: probability of a horizontal flip.
        photometric: apply `photometric_distortion`.
        mean: per-channel mean, 0..255 units.
        std: per-channel standard deviation, 0..255 units.
        ignore_index: label of unlabeled pixels; the mask's padding value.
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (512, 512),
        scale: Sequence[int] | None = (2048, 512),
        ratio_range: Sequence[float] | None = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
    ) -> None:
        if len(crop_size) != 2:
            raise ValueError(f"crop_size must be (h, w), got {crop_size!r}")
        self.crop_size = tuple(int(s) for s in crop_size)
        self.scale = tuple(scale) if scale is not None else None
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None
        self.cat_max_ratio = cat_max_ratio
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.ignore_index = ignore_index

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, ratio_range={self.ratio_range}, "
                f"cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, photometric={self.photometric})")

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transforms a uint8 (3, H, W) image and its int64 (H, W) mask into crop-size tensors."""
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        if self.scale is not None:
            ratio = _uniform(generator, *self.ratio_range) if self.ratio_range is not None else 1.0
            scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
            size = rescale_size(image.shape[-2], image.shape[-1], scale)
            image, mask = resize_image(image, size), resize_mask(mask, size)
        top, left, h, w = random_crop_box(mask, self.crop_size, self.cat_max_ratio, self.ignore_index, generator)
        image, mask = image[..., top : top + h, left : left + w], mask[top : top + h, left : left + w]
        if float(torch.rand((), generator=generator)) < self.flip_prob:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.photometric:
            image = photometric_distortion(image, generator)
        image = normalize(image, self.mean, self.std)
        image, mask = pad_to(image, mask, self.crop_size, self.ignore_index)
        return image.contiguous(), mask.contiguous()


class TestTransform:
    """Resizes the image only (the mask keeps its size: metrics are computed there) and normalises it.

    Args:
        scale: None keeps the size; with `keep_ratio`, (long, short) to fit inside; otherwise the exact output
            (width, height), mmseg's order.
        keep_ratio: keep the aspect ratio when resizing to `scale`.
        size_divisor: then round each side up to a multiple of this (SegFormer's `AlignedResize`, mmseg's
            `ResizeToMultiple`; a second resize, as theirs).
        mean: per-channel mean, 0..255 units.
        std: per-channel standard deviation, 0..255 units.
    """

    def __init__(
        self,
        scale: Sequence[int] | None = None,
        keep_ratio: bool = True,
        size_divisor: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if scale is not None and len(scale) != 2:
            raise ValueError(f"scale must be a pair, got {scale!r}")
        if size_divisor is not None and size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.scale = tuple(scale) if scale is not None else None
        self.keep_ratio = keep_ratio
        self.size_divisor = size_divisor
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __repr__(self) -> str:
        return f"TestTransform(scale={self.scale}, keep_ratio={self.keep_ratio}, size_divisor={self.size_divisor})"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) an image of (height, width) is resized to."""
        if self.scale is not None:
            if self.keep_ratio:
                height, width = rescale_size(height, width, self.scale)
            else:
                width, height = self.scale
        if self.size_divisor is not None:
            d = self.size_divisor
            height, width = math.ceil(height / d) * d, math.ceil(width / d) * d
        return height, width

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the resized, normalised image and the untouched mask (`generator` is unused)."""
        return self.normalize(self.resize(image)), mask

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """The resize steps only: the image keeps its dtype (uint8 stays uint8)."""
        if self.scale is not None:
            if self.keep_ratio:
                size = rescale_size(image.shape[-2], image.shape[-1], self.scale)
            else:
                size = (self.scale[1], self.scale[0])
            image = resize_image(image, size)
        if self.size_divisor is not None:
            d = self.size_divisor
            image = resize_image(image, (math.ceil(image.shape[-2] / d) * d, math.ceil(image.shape[-1] / d) * d))
        return image

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(image - mean) / std in float32, for (3, H, W) or (N, 3, H, W) pixels."""
        return normalize(image, self.mean, self.std)
