"""Published weights by name: `create_model(name, pretrained=TAG)` downloads, verifies, converts and caches.

The converted weights are a seglab safetensors file, `$SEGLAB_HOME/weights/<model>/<tag>.safetensors`, whose
metadata records the source it came from; a later call reads that file and never touches the network. A process
holds a file lock while it fetches and converts, so processes started together (torchrun) download once.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from seglab import registry
from seglab.checkpoint import checkpoint_meta, describe_mismatch, load_backbone_weights, load_state_dict, save_weights
from seglab.hub.download import cached_path, fetch_source, is_cached, lock
from seglab.hub.table import WeightsEntry, find_weights
from seglab.registry import CheckpointNote, class_dependent_keys


def dataset_meta(entry: WeightsEntry) -> dict[str, Any]:
    """What a prediction with `entry`'s weights needs besides the tensors: class names, palette, normalisation
    and the published test pipeline (the keys of `config.json` in `save_pretrained`)."""
    meta: dict[str, Any] = {"weights": entry.name, "dataset": entry.dataset, "mean": list(entry.mean),
                            "std": list(entry.std)}
    if entry.backbone_only:
        return meta
    from seglab.data.datasets import dataset_classes

    classes, palette = dataset_classes(entry.dataset, "")
    meta.update(classes=list(classes), palette=[list(c) for c in palette], test=dict(entry.test))
    if entry.miou is not None:
        meta["metrics"] = {"mIoU": entry.miou, **({"mIoU (multi-scale)": entry.miou_ms} if entry.miou_ms else {})}
    return meta


def pretrained_path(model: str, tag: str | bool = True, progress: bool = True,
                    img_size: int | None = None) -> tuple[WeightsEntry, Path]:
    """The row of (`model`, `tag`) and its converted seglab file, fetched and converted on first use.

    `img_size` (ViT families, backbone rows): the crop the ImageNet position embedding is resampled for (a model
    built with `img_size=768` needs a 48 x 48 grid); cached separately per size."""
    from seglab.convert import convert_checkpoint

    entry = find_weights(model, tag)
    size = img_size if entry.backbone_only and img_size is not None else entry.img_size
    path = cached_path(entry, size)
    if is_cached(entry, size):
        return entry, path
    with lock(path):
        if is_cached(entry, size):  # another process finished it while this one waited
            return entry, path
        source, sha256 = fetch_source(entry, progress=progress)
        result = convert_checkpoint(source, entry.convert, model, img_size=size)
        if result.backbone_only != entry.backbone_only:
            kind = "backbone-only" if result.backbone_only else "whole-model"
            raise ValueError(f"{entry.name}: {source} converted to {kind} weights, but the table lists it as "
                             f"{'an ImageNet backbone' if entry.backbone_only else 'a segmentation model'}")
        extra = {"weights": entry.name, "source": entry.location, "source_sha256": sha256,
                 "converted_from": entry.convert, "seglab_meta": json.dumps(dataset_meta(entry))}
        if result.backbone_only:
            extra["backbone_only"] = "true"
        save_weights(path, result.state_dict, model, result.num_classes, result.overrides, extra=extra)
    return entry, path


def load_classifier_free(model: nn.Module, path: Path, origin: str) -> list[str]:
    """Loads every tensor of `path` except the class-dependent ones (the classifier layers, which keep the
    initialisation `model` was built with); any other difference is an error. Returns the skipped keys."""
    state = load_state_dict(path)
    skipped = sorted(class_dependent_keys(model.model_name, model.model_overrides))
    own = {k: v for k, v in model.state_dict().items() if k not in skipped}
    rest = {k: v for k, v in state.items() if k not in skipped}
    problems = describe_mismatch(own, rest)
    if problems:
        raise ValueError("\n".join([f"{origin} ({path}) does not fit {model.model_name} apart from its classifier:",
                                    *problems]))
    missing, unexpected = model.load_state_dict(rest, strict=False)
    assert sorted(missing) == skipped and not unexpected, (missing, unexpected)  # describe_mismatch checked both
    return skipped


def create_model(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | Path | None = None,
    pretrained: str | bool | None = None,
    progress: bool = True,
    **overrides: Any,
) -> nn.Module:
    """Builds a registered model, optionally with published weights by tag or with a checkpoint file.

    Args:
        name: a name from `seglab.list_models()`.
        num_classes: output classes. With `pretrained` naming segmentation weights of another class count, every
            tensor but the classifier layers is loaded (the classifier keeps its initialisation; a `CheckpointNote`
            warning names the skipped keys) - the start of a fine-tune.
        checkpoint: a seglab checkpoint or plain state dict (see `seglab.registry.create_model`).
        pretrained: a tag of `seglab weights NAME` (`"ade20k-512"`, `"cityscapes-1024"`, `"imagenet"`), or True for
            the model's default row. An ImageNet tag loads the backbone only. Downloaded, verified and converted on
            first use, then read from `$SEGLAB_HOME/weights`.
        progress: show a download progress bar.
        **overrides: constructor options (see `seglab info NAME`).
    """
    if pretrained is None or pretrained is False:
        model = registry.create_model(name, num_classes=num_classes, checkpoint=checkpoint, **overrides)
        if checkpoint is not None:
            from seglab.hub.sharing import checkpoint_info

            model.seglab_meta = checkpoint_info(checkpoint)
        return model
    if checkpoint is not None:
        raise ValueError("give `pretrained` (published weights by tag) or `checkpoint` (a file), not both")
    from seglab.convert import IMG_SIZE_FAMILIES

    registry.get_entry(name)  # an unknown model is the first thing to say
    img_size = overrides.get("img_size") if name.startswith(IMG_SIZE_FAMILIES) else None
    entry, path = pretrained_path(name, pretrained, progress=progress, img_size=img_size)
    meta = checkpoint_meta(path)
    info = json.loads(meta.extra.get("seglab_meta", "{}"))
    options = {**meta.overrides, **overrides}
    if entry.backbone_only:
        model = registry.create_model(name, num_classes=num_classes, **options)
        load_backbone_weights(model, path)
        info = {k: info[k] for k in ("weights", "dataset", "mean", "std") if k in info}
    elif num_classes is None or num_classes == meta.num_classes:
        model = registry.create_model(name, checkpoint=path, **overrides)
    else:
        model = registry.create_model(name, num_classes=num_classes, **options)
        skipped = load_classifier_free(model, path, entry.name)
        warnings.warn(f"{entry.name}: loaded every tensor but the {meta.num_classes}-class classifier; "
                      f"{len(skipped)} tensor(s) start from the model's initialisation for {num_classes} classes: "
                      f"{', '.join(skipped)}", CheckpointNote, stacklevel=2)
        info = {k: info[k] for k in ("weights", "dataset", "mean", "std", "test") if k in info}
    model.seglab_meta = info
    return model
