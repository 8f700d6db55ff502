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
from seglab.inference import predict


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

    def save(self, out_dir: str | Path, stem: str = "prediction") -> tuple[Path, Path]:
        """Writes `<stem>.png` (an indexed PNG of the labels) and `<stem>_overlay.png` into `out_dir`."""
        from seglab.tools.visualize import save_label_png, save_overlay_png

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        labels = save_label_png(out_dir / f"{stem}.png", self.labels, self.palette)
        blended = save_overlay_png(out_dir / f"{stem}_overlay.png", self.image, self.labels, self.palette,
                                   class_names=self.classes)
        return labels, blended


def _as_tensor(image: Any) -> tuple[torch.Tensor, np.ndarray]:
    """An image as a uint8 (3, H, W) tensor and an (H, W, 3) array: a path, a PIL image, an (H, W, 3) uint8 array,
    or a (3, H, W) uint8 tensor."""
    from seglab.data.datasets import read_image

    if isinstance(image, (str, Path)):
        tensor = read_image(image)
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
    """

    def __init__(self, model: str | nn.Module, pretrained: str | bool | None = None,
                 checkpoint: str | Path | None = None, device: str | torch.device | None = None, flip: bool = False,
                 scales: tuple[float, ...] = (1.0,), mode: str | None = None,
                 crop_size: tuple[int, int] | None = None, stride: tuple[int, int] | None = None) -> None:
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
        tensor, _ = _as_tensor(image)
        return self._probs(tensor)

    def _probs(self, tensor: torch.Tensor) -> torch.Tensor:
        x = self.transform(tensor)[0][None].to(self.device)
        align_corners = self.model.align_corners
        with torch.inference_mode():
            probs = predict(self.model, x, mode=self.mode, crop_size=self.crop_size, stride=self.stride,
                            flip=self.flip, scales=self.scales, out_size=tuple(tensor.shape[-2:]),
                            align_corners=align_corners)
        return probs[0].cpu()

    def __call__(self, image: Any) -> Prediction:
        tensor, array = _as_tensor(image)
        labels = self._probs(tensor).argmax(0).numpy()
        return Prediction(labels=labels, image=array, classes=self.classes, palette=self.palette)
