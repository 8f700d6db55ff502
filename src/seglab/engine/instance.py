"""Instance segmentation runs: a run config whose `data.dataset` is an instance dataset trains a Mask R-CNN.

Recognised by `data.dataset`:

- `coco_instances`: a COCO instances JSON and an image folder per split, `data.options.ann_file` and
  `data.options.img_dir`, both relative to `data.root` with `{split}` replaced by the split name (defaults
  `annotations/instances_{split}.json` and `images/{split}`).
- `shapes_instances`: the synthetic instance shapes (`generate_shapes_instances`), written to `data.root` with the
  `data.generate` settings when missing or written with other settings; the same layout.

The model is `model.name` from `MASK_RCNN_VARIANTS` with `model.overrides` as `MaskRCNNOptions`; `model.num_classes`
defaults to the dataset's (categories + background). Images reach the model as floats in [0, 1]: torchvision's
transform resizes (`min_size`, `max_size`) and normalises them, so `data.mean` / `data.std` and the semantic
`data.train_transform` are not used, except `train_transform.flip_prob` (random horizontal flip).

Training is the run loop's (`seglab.engine.loop.RunLoop`, as for semantic runs): iteration-based, the optimizer
of `optim` (`build_optimizer`), linear warm-up then poly (`schedule.policy: poly`) or step decay (`policy: step`,
x `gamma` at each of `steps`), the sample order and flips derived from `(train.seed, position in the sample stream)`,
`work_dir/log.jsonl` records and TensorBoard, atomic `iter_N.safetensors` + `iter_N.state.pt` pairs named by
`latest.json` (written last), `train.keep_checkpoints`, `train.max_bad_losses`, `train.ema`, `train.amp`, the
disk-full guard, and `--resume` continuing exactly (the RNG states are saved: RPN / RoI sampling and multi-scale
sizes draw from torch's global generator). The loss is the sum of torchvision's loss dict; each part is logged.
Evaluation (`evaluate_instances`: segm, bbox and boundary AP) runs every `eval.interval` iterations and at the end;
the best `segm_AP` is saved as `best.safetensors`. One process only (no torchrun).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from seglab.checkpoint import read_checkpoint_meta
from seglab.config import ConfigError, RunConfig, ScheduleConfig
from seglab.data.coco_instances import CocoInstances, collate_instances, hflip_instances
from seglab.engine.loop import RunLoop, seed_everything, stream_loader
from seglab.engine.optim import scheduled_lr
from seglab.instance.mask_rcnn import MASK_RCNN_VARIANTS, build_mask_rcnn, evaluate_instances
from seglab.registry import load_model_weights

INSTANCE_DATASETS = ("coco_instances", "shapes_instances")
_DEFAULT_PATHS = {"ann_file": "annotations/instances_{split}.json", "img_dir": "images/{split}"}
_GENERATE_DEFAULTS = {"n_train": 200, "n_val": 50, "size": 128, "seed": 0}


def is_instance_config(config: RunConfig) -> bool:
    """Whether `config` describes an instance segmentation run (its `data.dataset` is an instance dataset)."""
    return config.data.dataset in INSTANCE_DATASETS


# ---------------------------------------------------------------------------------------------------- data
def split_paths(config: RunConfig, split: str) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of `split`."""
    unknown = sorted(set(config.data.options) - set(_DEFAULT_PATHS))
    if unknown:
        raise ConfigError(f"data.options: unknown key(s) {unknown} for {config.data.dataset}; valid: "
                          f"{', '.join(_DEFAULT_PATHS)}")
    paths = {**_DEFAULT_PATHS, **config.data.options}
    root = Path(config.data.root)
    return root / paths["ann_file"].format(split=split), root / paths["img_dir"].format(split=split)


def prepare_instance_data(config: RunConfig) -> None:
    """Writes the synthetic instance set (`shapes_instances`) when missing or written with other settings."""
    if config.data.dataset != "shapes_instances":
        return
    gen = {**_GENERATE_DEFAULTS, **config.data.generate}
    unknown = set(gen) - set(_GENERATE_DEFAULTS)
    if unknown:
        raise ConfigError(f"data.generate: unknown key(s) {sorted(unknown)}; valid: {', '.join(_GENERATE_DEFAULTS)}")
    root = Path(config.data.root)
    marker = root / "annotations" / "instances_train.json"
    if marker.is_file() and (root / "annotations" / "instances_val.json").is_file():
        info = json.loads(marker.read_text()).get("info", {})
        size = [gen["size"]] * 2 if isinstance(gen["size"], int) else list(gen["size"])
        if (info.get("seed"), info.get("size"), info.get("n_train"), info.get("n_val")) == (
                gen["seed"], size, gen["n_train"], gen["n_val"]):
            return
    from seglab.data.synthetic_instances import generate_shapes_instances

    generate_shapes_instances(root, gen["n_train"], gen["n_val"], gen["size"], gen["seed"])


def build_instance_split(config: RunConfig, split: str, train: bool = False) -> CocoInstances:
    """The `CocoInstances` of `split`; for training, images without annotations are left out."""
    ann_file, img_dir = split_paths(config, split)
    return CocoInstances(ann_file, img_dir, skip_empty=train)


class _SeededFlips(Dataset):
    """`dataset[(index, seed)]`: the sample, flipped left-right with probability `p` drawn from `seed` alone."""

    def __init__(self, dataset: CocoInstances, p: float) -> None:
        self.dataset = dataset
        self.p = p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        image, target = self.dataset[index]
        if self.p > 0 and float(torch.rand((), generator=torch.Generator().manual_seed(seed))) < self.p:
            image, target = hflip_instances(image, target)
        return image, target


# ---------------------------------------------------------------------------------------------------- model
def build_instance_model(config: RunConfig, num_classes: int | None, checkpoint: str | Path | None = None) -> nn.Module:
    """The configured Mask R-CNN; `checkpoint` (or `model.checkpoint`) loads whole-model weights strictly."""
    name = config.model.name
    if name not in MASK_RCNN_VARIANTS:
        raise ConfigError(f"model.name: {name!r} is not an instance model; with data.dataset "
                          f"{config.data.dataset!r} choose one of {', '.join(MASK_RCNN_VARIANTS)}")
    classes = config.model.num_classes or num_classes
    if classes is None:
        raise ConfigError("model.num_classes is needed (classes including the background)")
    model = build_mask_rcnn(name, classes, **config.model.overrides)
    checkpoint = checkpoint or config.model.checkpoint
    if checkpoint:
        load_model_weights(model, checkpoint)
    return model


def load_instance_checkpoint(path: str | Path) -> nn.Module:
    """A Mask R-CNN rebuilt from a seglab checkpoint's metadata (name, classes, options) with its weights."""
    meta = read_checkpoint_meta(path)
    if meta.model not in MASK_RCNN_VARIANTS:
        raise ValueError(f"{path} holds {meta.model!r}, not a Mask R-CNN ({', '.join(MASK_RCNN_VARIANTS)})")
    model = build_mask_rcnn(meta.model, meta.num_classes or 91, **meta.overrides)
    load_model_weights(model, path)
    return model


def is_instance_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a seglab checkpoint of a Mask R-CNN (False for other or unreadable files)."""
    try:
        return read_checkpoint_meta(path).model in MASK_RCNN_VARIANTS
    except (ValueError, FileNotFoundError):
        return False


# ---------------------------------------------------------------------------------------------------- schedule
def instance_lr(iteration: int, base_lr: float, schedule: ScheduleConfig) -> float:
    """Learning rate at `iteration`: `scheduled_lr`'s warm-up + poly, or warm-up + step decay (`policy: step`)."""
    if schedule.policy == "poly":
        return scheduled_lr(iteration, base_lr, schedule)
    if schedule.policy != "step":
        raise ConfigError(f"schedule.policy: expected poly or step, got {schedule.policy!r}")
    lr = base_lr * schedule.gamma ** sum(iteration >= s for s in schedule.steps)
    if iteration < schedule.warmup_iters:  # mmcv's linear warm-up, as in scheduled_lr
        lr *= 1.0 - (1.0 - iteration / schedule.warmup_iters) * (1.0 - schedule.warmup_ratio)
    return lr


# ---------------------------------------------------------------------------------------------------- training
@dataclasses.dataclass
class InstanceTrainResult:
    iterations: int
    final_metrics: dict[str, float] | None
    best_ap: float | None
    work_dir: Path
    bad_steps: int = 0


class InstanceTrainer(RunLoop):
    """Trains a torchvision Mask R-CNN on a `CocoInstances` training set as `config` says (see the module doc); the
    run itself (checkpoints, resume, logs, NaN guard) is `RunLoop`'s."""

    best_metric = "segm_AP"
    best_state_key = "best_ap"
    train_method = None  # the model's call: torchvision's loss dict in training mode

    def __init__(self, config: RunConfig, model: nn.Module, train_set: CocoInstances, val_set: CocoInstances | None,
                 device: torch.device | str = "cpu") -> None:
        if config.optim.accumulate < 1:
            raise ConfigError(f"optim.accumulate: expected an integer >= 1, got {config.optim.accumulate}")
        instance_lr(0, 1.0, config.schedule)  # rejects an unknown policy before any work
        super().__init__(config, model, device)
        self.train_set = _SeededFlips(train_set, config.data.train_transform.flip_prob)
        self.val_set = val_set

    @property
    def best_ap(self) -> float | None:
        return self.best

    def lr_at(self, iteration: int, base_lr: float, schedule: ScheduleConfig) -> float:
        return instance_lr(iteration, base_lr, schedule)

    def batches(self) -> Iterator:
        return iter(stream_loader(self.train_set, collate_instances, self.config,
                                  start_step=self.iteration * self.config.optim.accumulate,
                                  pin_memory=self.device.type == "cuda"))

    def fetch(self, batches: Iterator) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        images, targets = next(batches)
        return ([image.to(self.device) for image in images],
                [{k: v.to(self.device) for k, v in t.items()} for t in targets])

    def forward(self, module: nn.Module, batch) -> dict[str, torch.Tensor]:
        return module(*batch)

    def loss(self, outputs: dict[str, torch.Tensor], batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return sum(outputs.values()), outputs

    @property
    def evaluates(self) -> bool:
        return self.val_set is not None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_instances(model, self.val_set, self.device)

    def eval_report(self, metrics: dict) -> str:
        return (f"iter {self.iteration}: segm AP {metrics.get('segm_AP', math.nan):.4f}, "
                f"boundary AP {metrics.get('boundary_AP', math.nan):.4f}")

    def result(self, metrics: dict | None) -> InstanceTrainResult:
        return InstanceTrainResult(self.iteration, metrics, self.best, self.work_dir, self.bad_steps)


def run_instance_training(config: RunConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None,
                          init_from: str | None = None, device: torch.device | str | None = None,
                          resume_changes: list | None = None):
    """Trains the configured Mask R-CNN; returns (model, val_set, InstanceTrainResult)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("instance training runs in one process; start it without torchrun")
    if init_from is not None:
        config.train.init_from = init_from
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    seed_everything(config.train.seed)
    prepare_instance_data(config)
    train_set = build_instance_split(config, config.data.train_split, train=True)
    val_set = build_instance_split(config, config.data.val_split)
    if config.model.num_classes and config.model.num_classes != train_set.num_classes:
        print(f"[seglab] model.num_classes {config.model.num_classes} differs from the dataset's "
              f"{train_set.num_classes} (categories + background)", flush=True)
    model = build_instance_model(config, train_set.num_classes)
    trainer = InstanceTrainer(config, model, train_set, val_set, device=device)
    result = trainer.train(resume=resume, progress=progress, stop_at=stop_at, resume_changes=resume_changes)
    return trainer.model, val_set, result

