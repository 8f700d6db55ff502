"""`Predictor`: segment an image in one line, with the normalisation and test-time resize the weights were
published (or trained) with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seglab.data.transforms import TestTransform
from seglab.hub.table import IMAGENET_MEAN, IMAGENET_STD
from seglab.inference import predict, resized_labels, slide_inference, slide_labels

# an overlay of a larger image is drawn at a reduced size (its long side OVERLAY_MAX_SIDE pixels)
OVERLAY_MAX_PIXELS = 4096 * 4096
OVERLAY_MAX_SIDE = 4096


@dataclass
class Prediction:
    """One image's result: `labels` (H, W) class indices at the image's size, with the names and colours."""

    labels: np.ndarray
    image: np.ndarray  # (H, W, 3) uint8 RGB, as given
    classes: tuple[str, ...]
    palette: list[tuple[int, int, int]]

    def present(self) -> list[str]:
        """Names of the classes that appear, in index order."""
        return [self.classes[int(c)] for c in np.unique(self.labels)]

    def overlay(self, alpha: float = 0.5, legend: bool = True) -> np.ndarray:
        """The label colours blended over the image, with a legend of the classes present."""
        from seglab.tools.visualize import overlay, with_legend

        picture = overlay(self.image, self.labels, self.palette, alpha)
        if legend:
            picture = with_legend(picture, [(self.classes[int(c)], self.palette[int(c)])
                                            for c in np.unique(self.labels)])
        return picture

    def save(self, out_dir: str | Path, stem: str = "prediction", tiled: bool = False) -> tuple[Path, Path]:
        """Writes the labels and `<stem>_overlay.png` into `out_dir`.

        The labels are `<stem>.png` (an indexed PNG), or with `tiled` `<stem>.tif` (a tiled, compressed TIFF with
        the palette, for huge maps). An image over `OVERLAY_MAX_PIXELS` gets its overlay at a reduced size.
        """
        from seglab.tools.visualize import save_label_png, save_overlay_png

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if tiled:
            from seglab.tools.tiff import write_tiled_tiff

            palette = self.palette if len(self.palette) <= 256 else None
            labels = write_tiled_tiff(out_dir / f"{stem}.tif", self.labels, palette)
        else:
            labels = save_label_png(out_dir / f"{stem}.png", self.labels, self.palette)
        image, label_map = self.image, self.labels
        height, width = label_map.shape
        if height * width > OVERLAY_MAX_PIXELS:  # nearest-neighbour preview: every k-th pixel
            step = -(-max(height, width) // OVERLAY_MAX_SIDE)
            image, label_map = image[::step, ::step], label_map[::step, ::step]
        blended = save_overlay_png(out_dir / f"{stem}_overlay.png", image, label_map, self.palette,
                                   class_names=self.classes)
        return labels, blended


def _as_tensor(image: Any, max_pixels: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """An image as a uint8 (3, H, W) tensor and an (H, W, 3) array: a path, a PIL image, an (H, W, 3) uint8 array,
    or a (3, H, W) uint8 tensor."""
    from seglab.data.datasets import read_image

    if isinstance(image, (str, Path)):
        tensor = read_image(image, max_pixels=max_pixels)
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must be uint8 (3, H, W), got {image.dtype} {tuple(image.shape)}")
        tensor = image
    else:
        if hasattr(image, "convert"):  # PIL
            image = np.asarray(image.convert("RGB"))
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"an array image must be uint8 (H, W, 3) RGB, got {array.dtype} {array.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    return tensor, tensor.permute(1, 2, 0).numpy()


class Predictor:
    """A model with its classes and test pipeline: `Predictor("segformer_b0", pretrained="ade20k-512")(image)`.

    Args:
        model: a registered name, or a model (its `seglab_meta` gives classes and pipeline).
        pretrained: a weights tag (default: the model's default row when neither this nor `checkpoint` is given).
        checkpoint: a seglab checkpoint file instead (e.g. from `seglab train`).
        device: `cpu`, `cuda`, ...; default CUDA when available.
        flip, scales: test-time augmentation (horizontal flip; image scales).
        mode, crop_size, stride: override the published whole / slide inference.
        max_pixels: read image files of up to this many pixels, past PIL's decompression-bomb limit.
        window_batch: slide windows per forward pass; default 8 on a GPU, 2 on the CPU (where batching adds no
            parallelism: 2 was faster than 8 on a 12000 x 12000 image, with 0.4 GiB less peak memory).

    Without test-time augmentation, labels are computed without (K, H, W) maps at the image's size: slide
    inference streams (`slide_labels`) and logits are resized to the image a few classes at a time
    (`resized_labels`), so a 12000 x 12000 image with 150 classes fits in a few GB. The labels are the argmax of
    the averaged logits, which is the argmax of `probabilities` (softmax keeps the order).
    """

    def __init__(self, model: str | nn.Module, pretrained: str | bool | None = None,
                 checkpoint: str | Path | None = None, device: str | torch.device | None = None, flip: bool = False,
                 scales: tuple[float, ...] = (1.0,), mode: str | None = None,
                 crop_size: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
                 max_pixels: int | None = None, window_batch: int | None = None) -> None:
        from seglab.hub.pretrained import create_model
        from seglab.hub.sharing import checkpoint_info

        if isinstance(model, str):
            if pretrained is None and checkpoint is None:
                pretrained = True
            model = create_model(model, pretrained=pretrained, checkpoint=checkpoint)
            if checkpoint is not None:
                model.seglab_meta = checkpoint_info(checkpoint)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        meta = getattr(model, "seglab_meta", {})
        test = dict(meta.get("test") or {})
        self.transform = TestTransform(scale=test.get("scale"), size_divisor=test.get("size_divisor"),
                                       mean=meta.get("mean") or IMAGENET_MEAN, std=meta.get("std") or IMAGENET_STD)
        self.mode = mode or test.get("mode") or "whole"
        self.crop_size = crop_size or test.get("crop")
        self.stride = stride or test.get("stride")
        if self.mode == "slide" and not (self.crop_size and self.stride):
            raise ValueError("slide inference needs crop_size and stride")
        self.flip, self.scales = flip, tuple(scales)
        if window_batch is None:
            window_batch = 2 if torch.device(self.device).type == "cpu" else 8
        self.max_pixels, self.window_batch = max_pixels, window_batch
        from seglab.palette import make_palette

        num_classes = model.num_classes
        classes = meta.get("classes")
        if not classes or len(classes) != num_classes:
            classes = [str(i) for i in range(num_classes)]
        self.classes = tuple(classes)
        self.palette = [tuple(int(v) for v in c) for c in make_palette(num_classes, palette=meta.get("palette"))]

    @classmethod
    def from_pretrained(cls, source: str | Path, revision: str | None = None, **kwargs: Any) -> Predictor:
        """A predictor for a folder written by `save_pretrained` or a Hub repo id."""
        from seglab.hub.sharing import from_pretrained

        return cls(from_pretrained(source, revision=revision), **kwargs)

    def probabilities(self, image: Any) -> torch.Tensor:
        """(K, H, W) class probabilities at the image's size."""
        tensor, _ = _as_tensor(image, self.max_pixels)
        return self._probs(tensor)

    def _probs(self, tensor: torch.Tensor) -> torch.Tensor:
        x = self.transform(tensor)[0][None].to(self.device)
        align_corners = self.model.align_corners
        with torch.inference_mode():
            probs = predict(self.model, x, mode=self.mode, crop_size=self.crop_size, stride=self.stride,
                            flip=self.flip, scales=self.scales, out_size=tuple(tensor.shape[-2:]),
                            align_corners=align_corners, window_batch=self.window_batch)
        return probs[0].cpu()

    def _labels(self, tensor: torch.Tensor) -> torch.Tensor:
        """(H, W) class indices at the image's size, without (K, H, W) maps unless test-time augmentation is on."""
        if self.flip or self.scales != (1.0,):
            return self._probs(tensor).argmax(0)
        image = self.transform.resize(tensor)[None]  # uint8 until each window (or the whole image) is normalised
        size, align_corners = tuple(tensor.shape[-2:]), self.model.align_corners

        def prepare(pixels: torch.Tensor) -> torch.Tensor:
            return self.transform.normalize(pixels).to(self.device)

        with torch.inference_mode():
            if self.mode == "slide" and tuple(image.shape[-2:]) == size:
                labels = slide_labels(self.model, image, self.crop_size, self.stride, align_corners,
                                      self.window_batch, preprocess=prepare)
            elif self.mode == "slide":
                logits = slide_inference(self.model, prepare(image), self.crop_size, self.stride, align_corners,
                                         self.window_batch)
                labels = resized_labels(logits, size, align_corners)
            else:
                labels = resized_labels(self.model(prepare(image)), size, align_corners)
        return labels[0].cpu()

    def labels_batch(self, images: list[torch.Tensor], mode: str | None = None,
                     flip: bool | None = None) -> torch.Tensor:
        """(B, H, W) class indices of uint8 (3, H, W) images of one size, in one forward pass (slide: the windows
        of every image in the same passes). `mode` and `flip` override the predictor's for this call; slide needs
        its `crop_size` and `stride`. What a server batches concurrent requests with."""
        sizes = {tuple(t.shape[-2:]) for t in images}
        if len(sizes) != 1:
            raise ValueError(f"labels_batch takes images of one size, got {sorted(sizes)}")
        mode = mode or self.mode
        flip = self.flip if flip is None else flip
        if mode == "slide" and not (self.crop_size and self.stride):
            raise ValueError("slide inference needs crop_size and stride")
        size = sizes.pop()
        x = self.transform.normalize(torch.stack([self.transform.resize(t) for t in images])).to(self.device)
        align_corners = self.model.align_corners
        with torch.inference_mode():
            if flip or self.scales != (1.0,):
                probs = predict(self.model, x, mode=mode, crop_size=self.crop_size, stride=self.stride, flip=flip,
                                scales=self.scales, out_size=size, align_corners=align_corners,
                                window_batch=self.window_batch)
                return probs.argmax(1).cpu()
            if mode == "slide":
                logits = slide_inference(self.model, x, self.crop_size, self.stride, align_corners,
                                         self.window_batch)
            else:
                logits = self.model(x)
            return resized_labels(logits, size, align_corners).cpu()

    def __call__(self, image: Any) -> Prediction:
        tensor, array = _as_tensor(image, self.max_pixels)
        labels = self._labels(tensor).numpy()
        return Prediction(labels=labels, image=array, classes=self.classes, palette=self.palette)
