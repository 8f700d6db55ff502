"""What an analysis runs on: a model with its run config, checkpoint digest, validation split and classes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from seglab.config import RunConfig, dump_config, load_config
from seglab.engine.run import build_model, build_split, prepare_data


@dataclass
class Subject:
    """One model to analyse.

    Attributes:
        label: the name shown in tables and figures (the config's file stem, or the model name).
        model: the network in eval mode, on its device.
        config: the run config (a model name alone gets the default config with that model).
        checkpoint: the weights file, or None for the random initialisation.
        digest: sha256 of the checkpoint file (first 16 hex digits), or "random init".
        device: where the model runs.
    """

    label: str
    model: nn.Module
    config: RunConfig
    checkpoint: str | None
    digest: str
    device: torch.device

    @property
    def config_text(self) -> str:
        return dump_config(self.config)

    def dataset(self, split: str | None = None, limit: int | None = None):
        """The config's validation split (or `split`), generated first for the shapes data; its first `limit`
        samples when given."""
        prepare_data(self.config)
        dataset = build_split(self.config, split or self.config.data.val_split)
        if limit is not None and limit < len(dataset):
            subset = Subset(dataset, range(limit))
            subset.classes = getattr(dataset, "classes", None)  # type: ignore[attr-defined]
            subset.palette = getattr(dataset, "palette", None)  # type: ignore[attr-defined]
            return subset
        return dataset

    def input_size(self) -> tuple[int, int]:
        """The training crop (height, width): the size the model learned at."""
        return tuple(self.config.data.train_transform.crop_size)  # type: ignore[return-value]


def checkpoint_digest(path: str | Path | None) -> str:
    if path is None:
        return "random init"
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def load_subject(config_or_model: str, checkpoint: str | None, overrides: list[str] | None = None,
                 device: torch.device | str = "cpu", num_classes: int | None = None) -> Subject:
    """A config file (`.yaml`) with its model, or a registered model name with the default run config; the weights
    from `checkpoint` (None: the random initialisation, which an ERF can still be taken of)."""
    from seglab.registry import get_entry, list_models

    path = Path(config_or_model)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"run config {path} not found")
        config = load_config(path, overrides)
        label = path.stem
    else:
        if config_or_model not in list_models():
            raise ValueError(f"{config_or_model!r} is neither a run config (.yaml) nor a registered model; "
                             f"`seglab models` lists the models")
        config = load_config(None, [f"model.name={config_or_model}", *(overrides or [])])
        label = config_or_model
    task = get_entry(config.model.name).task
    if task != "semantic":
        raise ValueError(f"{config.model.name} is a model of the {task!r} task; the analyses take semantic "
                         f"segmentation models (`seglab models` lists the task of each)")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    model = build_model(config, num_classes or config.model.num_classes, checkpoint=checkpoint)
    device = torch.device(device)
    return Subject(label, model.eval().to(device), config, checkpoint, checkpoint_digest(checkpoint), device)


def image_array(sample_image: torch.Tensor) -> np.ndarray:
    """A dataset sample's uint8 (3, H, W) tensor as an (H, W, 3) array."""
    return sample_image.permute(1, 2, 0).contiguous().numpy()
