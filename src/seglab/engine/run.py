"""From a run config to datasets, a model, training and evaluation: what the CLI commands call."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seglab.checkpoint import load_backbone_weights
from seglab.config import RunConfig
from seglab.data.datasets import build_dataset
from seglab.data.transforms import TestTransform, TrainTransform
from seglab.inference import predict
from seglab.metrics import ConfusionMatrix
from seglab.registry import create_model


def prepare_data(config: RunConfig) -> None:
    """Writes a generated dataset (`data.dataset: shapes`) to `data.root` when it is missing, or when
    `data.generate` asks for other settings than the ones it was written with.

    `data.generate` takes `n_train`, `n_val`, `size`, `seed` and `options` (fields of
    `seglab.data.synthetic.ShapesOptions`, e.g. `{min_scale: 0.12}`; the others keep their defaults).
    """
    if config.data.dataset != "shapes":
        return
    from dataclasses import asdict, fields

    from seglab.data.datasets import read_dataset_meta
    from seglab.data.synthetic import ShapesOptions, generate_shapes

    root = Path(config.data.root)
    gen = {"n_train": 1000, "n_val": 100, "size": 128, "seed": 0, "options": {}, **config.data.generate}
    unknown = set(gen) - {"n_train", "n_val", "size", "seed", "options"}
    if unknown:
        raise ValueError(f"data.generate: unknown key(s) {sorted(unknown)}; valid: n_train, n_val, size, seed, options")
    valid = [f.name for f in fields(ShapesOptions)]
    bad = set(gen["options"] or {}) - set(valid)
    if bad:
        raise ValueError(f"data.generate.options: unknown key(s) {sorted(bad)}; valid: {', '.join(valid)}")
    options = ShapesOptions(**(gen["options"] or {}))
    # the generator options are always compared (their defaults when the config names none: two configs sharing a
    # root must not train on each other's data); counts, size and seed only when the config names them, so that a
    # dataset written by `seglab data shapes` serves a config without a `generate` section
    wanted = {k: list(v) if isinstance(v, list | tuple) else v for k, v in config.data.generate.items()}
    wanted["options"] = asdict(options)
    meta = read_dataset_meta(root) if (root / "dataset.yaml").is_file() else None
    source = (meta or {}).get("source") or {}
    if meta is not None and all(source.get(k) == v for k, v in wanted.items()):
        return  # there, and written with the requested settings
    generate_shapes(root, n_train=gen["n_train"], n_val=gen["n_val"], size=gen["size"], seed=gen["seed"],
                    options=options)


def build_split(config: RunConfig, split: str):
    """The dataset of `split` as `config.data` describes it.

    `data.reduce_zero_label: true` turns the convention on; `false` keeps the dataset's own (ADE20K's is on), so
    switching it off for a named dataset goes through `data.options: {reduce_zero_label: false}`. `data.options`
    holds any further `build_dataset` keyword arguments and wins over the other keys.
    """
    data = config.data
    kwargs = {"ignore_index": data.ignore_index}
    if data.reduce_zero_label:
        kwargs["reduce_zero_label"] = True
    kwargs.update(data.options)
    return build_dataset(data.dataset, data.root, split, **kwargs)


def build_train_transform(config: RunConfig) -> TrainTransform:
    t, data = config.data.train_transform, config.data
    return TrainTransform(crop_size=tuple(t.crop_size), scale=tuple(t.scale), ratio_range=tuple(t.ratio_range),
                          cat_max_ratio=t.cat_max_ratio, flip_prob=t.flip_prob, photometric=t.photometric,
                          mean=tuple(data.mean), std=tuple(data.std), ignore_index=data.ignore_index)


def build_test_transform(config: RunConfig) -> TestTransform:
    t, data = config.data.test_transform, config.data
    return TestTransform(scale=tuple(t.scale) if t.scale else None, size_divisor=t.size_divisor,
                         mean=tuple(data.mean), std=tuple(data.std))


def scale_mismatch(config: RunConfig, dataset, samples: int = 8) -> str | None:
    """A warning when evaluation would feed the model its images at another scale than training did: the test
    transform keeps the image size (or uses another scale) while the training scale (at resize ratio 1) would
    resize the same images by more than 10%. Looks at the sizes (file headers only) of the first `samples`."""
    from PIL import Image

    from seglab.data.transforms import rescale_size

    train_scale, test_scale = tuple(config.data.train_transform.scale), config.data.test_transform.scale
    index = getattr(dataset, "index", None)
    if index is None or not index.samples:
        return None
    for sample in index.samples[:samples]:
        try:
            with Image.open(sample[0]) as picture:
                width, height = picture.size
        except OSError:
            continue
        trained = rescale_size(height, width, train_scale)
        tested = rescale_size(height, width, tuple(test_scale)) if test_scale else (height, width)
        if abs(trained[0] / tested[0] - 1) > 0.1 or abs(trained[1] / tested[1] - 1) > 0.1:
            test = (f"data.test_transform.scale {list(test_scale)}" if test_scale
                    else "data.test_transform.scale unset (the image's own size)")
            return (f"training resizes {Path(sample[0]).name} ({height}x{width}) to {trained[0]}x{trained[1]} "
                    f"(data.train_transform.scale {list(train_scale)}), evaluation feeds it at "
                    f"{tested[0]}x{tested[1]} ({test}): objects appear at another scale than the model learned; "
                    f"set data.test_transform.scale: {list(train_scale)} to evaluate as trained")
    return None


def build_model(config: RunConfig, num_classes: int | None, checkpoint: str | None = None) -> nn.Module:
    """The configured model: `checkpoint` (or `model.checkpoint`) loads whole-model weights from a file; otherwise
    `model.init` whole-model published weights by tag, and `model.pretrained` backbone weights by tag or file."""
    from seglab.hub.pretrained import create_model as create_pretrained
    from seglab.hub.table import find_weights

    m = config.model
    checkpoint = checkpoint or m.checkpoint
    num_classes = m.num_classes or num_classes
    if checkpoint is not None:
        return create_model(m.name, num_classes=num_classes, checkpoint=checkpoint, **m.overrides)
    if m.init and m.pretrained:
        raise ValueError("model.init (whole-model weights) and model.pretrained (backbone weights) exclude each "
                         "other: give one")
    if m.init:
        return create_pretrained(m.name, num_classes=num_classes, pretrained=m.init, **m.overrides)
    if m.pretrained and not Path(m.pretrained).exists() and _looks_like_tag(m.pretrained):
        entry = find_weights(m.name, m.pretrained)
        if not entry.backbone_only:
            raise ValueError(f"model.pretrained: {entry.name} holds whole-model weights; set model.init: "
                             f"{entry.tag} to start from them (model.pretrained takes backbone weights)")
        return create_pretrained(m.name, num_classes=num_classes, pretrained=m.pretrained, **m.overrides)
    model = create_model(m.name, num_classes=num_classes, **m.overrides)
    if m.pretrained:
        load_backbone_weights(model, m.pretrained)
    return model


def _looks_like_tag(value: str) -> bool:
    """A weights tag (`imagenet`, `ade20k-512`) rather than a path (a separator or a checkpoint suffix)."""
    suffixes = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz", ".pkl")
    return "/" not in value and "\\" not in value and not value.endswith(suffixes)


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
             on_batch=None, confusion_png: str | Path | None = None, class_names=None) -> dict:
    """mIoU and friends over `dataset` with the configured test transform and inference mode.

    `confusion_png`: also draw the row-normalised confusion matrix there (main process only).

    In a torchrun job each rank evaluates its own contiguous share of `dataset` (no sample twice, no padding) and
    the confusion matrices are summed over the ranks, so every rank returns the metrics of the whole set, equal
    to a single-process evaluation.

    `on_batch(samples, predictions)` sees each batch's original samples and predicted labels (for overlays); in a
    torchrun job, this rank's share only.
    """
    from torch.utils.data import Subset

    from seglab.engine.distributed import get_rank, get_world_size, shard_range

    world_size = get_world_size()
    if world_size > 1:
        dataset = Subset(dataset, range(*shard_range(len(dataset), get_rank(), world_size)))
    transform = build_test_transform(config)
    cm = ConfusionMatrix(num_classes, ignore_index=config.data.ignore_index)
    ev = config.eval
    was_training = model.training
    model.eval()
    align_corners = model.align_corners
    for samples in _same_size_batches(dataset, config.data.val_batch_size):
        images = torch.stack([transform(s["image"])[0] for s in samples]).to(device)
        masks = torch.stack([s["mask"] for s in samples]).to(device)
        probs = predict(model, images, mode=ev.mode, crop_size=ev.crop_size, stride=ev.stride, flip=ev.flip,
                        scales=ev.scales, out_size=tuple(masks.shape[-2:]), align_corners=align_corners)
        labels = probs.argmax(1)
        cm.update(labels, masks)
        if on_batch is not None:
            on_batch(samples, labels.cpu())
    model.train(was_training)
    cm.all_reduce()
    if confusion_png is not None and get_rank() == 0:
        from seglab.tools.visualize import plot_confusion_matrix

        plot_confusion_matrix(cm, class_names, confusion_png)
    return cm.compute()
