"""From a run config to datasets, a model, training and evaluation: what the CLI commands call."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seglab.config import RunConfig
from seglab.data.datasets import build_dataset
from seglab.data.transforms import TestTransform, TrainTransform
from seglab.engine.checkpoint import load_state_dict
from seglab.inference import predict
from seglab.metrics import ConfusionMatrix
from seglab.registry import create_model


def prepare_data(config: RunConfig) -> None:
    """Writes a generated dataset (`data.dataset: shapes`) to `data.root` if it is not there yet."""
    if config.data.dataset != "shapes":
        return
    root = Path(config.data.root)
    if (root / "dataset.yaml").is_file():
        return
    from seglab.data.synthetic import generate_shapes

    gen = {"n_train": 1000, "n_val": 100, "size": 128, "seed": 0, **config.data.generate}
    generate_shapes(root, n_train=gen["n_train"], n_val=gen["n_val"], size=gen["size"], seed=gen["seed"])


def build_split(config: RunConfig, split: str):
    data = config.data
    return build_dataset(data.dataset, data.root, split, reduce_zero_label=data.reduce_zero_label,
                         ignore_index=data.ignore_index)


def build_train_transform(config: RunConfig) -> TrainTransform:
    t, data = config.data.train_transform, config.data
    return TrainTransform(crop_size=tuple(t.crop_size), scale=tuple(t.scale), ratio_range=tuple(t.ratio_range),
                          cat_max_ratio=t.cat_max_ratio, flip_prob=t.flip_prob, photometric=t.photometric,
                          mean=tuple(data.mean), std=tuple(data.std), ignore_index=data.ignore_index)


def build_test_transform(config: RunConfig) -> TestTransform:
    t, data = config.data.test_transform, config.data
    return TestTransform(scale=tuple(t.scale) if t.scale else None, size_divisor=t.size_divisor,
                         mean=tuple(data.mean), std=tuple(data.std))


def build_model(config: RunConfig, num_classes: int | None, checkpoint: str | None = None) -> nn.Module:
    """The configured model; `checkpoint` (or `model.checkpoint`) loads whole-model weights,
    `model.pretrained` backbone weights."""
    checkpoint = checkpoint or config.model.checkpoint
    model = create_model(config.model.name, num_classes=config.model.num_classes or num_classes,
                         checkpoint=checkpoint, **config.model.overrides)
    if config.model.pretrained and checkpoint is None:
        load_backbone_weights(model, config.model.pretrained)
    return model


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Loads backbone weights strictly: keys with or without the `backbone.` prefix; head keys are ignored."""
    state = load_state_dict(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    result = model.backbone.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"pretrained backbone weights {path} do not fit {type(model.backbone).__name__}: "
                         f"missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}")


def _same_size_batches(dataset, batch_size: int):
    """Consecutive samples grouped into batches of equal image size (no padding needed)."""
    batch = []
    for i in range(len(dataset)):
        sample = dataset[i]
        if batch and (len(batch) == batch_size or sample["image"].shape != batch[0]["image"].shape):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


@torch.no_grad()
def evaluate(model: nn.Module, dataset, config: RunConfig, num_classes: int, device: torch.device | str = "cpu",
             on_batch=None) -> dict:
    """mIoU and friends over `dataset` with the configured test transform and inference mode.

    `on_batch(samples, predictions)` sees each batch's original samples and predicted labels (for overlays).
    """
    transform = build_test_transform(config)
    cm = ConfusionMatrix(num_classes, ignore_index=config.data.ignore_index)
    ev = config.eval
    was_training = model.training
    model.eval()
    align_corners = bool(getattr(getattr(model, "decode_head", None), "align_corners", False))
    for samples in _same_size_batches(dataset, config.data.val_batch_size):
        images = torch.stack([transform(s["image"]) for s in samples]).to(device)
        masks = torch.stack([s["mask"] for s in samples]).to(device)
        probs = predict(model, images, mode=ev.mode, crop_size=ev.crop_size, stride=ev.stride, flip=ev.flip,
                        scales=ev.scales, out_size=tuple(masks.shape[-2:]), align_corners=align_corners)
        labels = probs.argmax(1)
        cm.update(labels, masks)
        if on_batch is not None:
            on_batch(samples, labels.cpu())
    model.train(was_training)
    return cm.compute()
